"""A small built-in task set in AgentBench's DB layout, for the registered ``agentbench_db`` environment to run when
no task file is given (so ``agenttuning check`` and ``agenttuning envs`` work without AgentBench's files).

Written for this project (the tables are invented); each record is what an AgentBench task file holds, and
:func:`agenttuning.envs.agentbench.db.sample_tasks` imports them the same way as a user's file. They use what real
AgentBench files use: MySQL types (``INT``, ``DECIMAL(6,1)``, ``YEAR``, ``VARCHAR``, ``DATE``), names with spaces,
colons and parentheses, backquoted gold SQL, MySQL's backslash escapes, labels such as ``"3.0"`` for a count, and
questions of several categories, inserts, updates and a delete.
"""

from __future__ import annotations

from typing import Any


def _table(name: str, columns: list[tuple[str, str]], rows: list[list[Any]]) -> dict[str, Any]:
    return {"table_name": name, "table_info": {"columns": [{"name": n, "type": t} for n, t in columns], "rows": rows}}


def _describe(table: dict[str, Any]) -> str:
    heads = ",".join(c["name"] for c in table["table_info"]["columns"])
    return f"The name of this table is {table['table_name']}, and the headers of this table are {heads}."


def _question(description: str, table: dict[str, Any], kind: str, label: list[str], query: str) -> dict[str, Any]:
    return {"description": description, "label": label, "table": table, "type": [kind],
            "add_description": _describe(table), "sql": {"query": query}, "source": "agenttuning-sample"}


def _change(description: str, table: dict[str, Any], kind: str, statement: str) -> dict[str, Any]:
    return {"description": description, "label": [statement], "table": table, "type": [kind],
            "add_description": _describe(table), "source": "agenttuning-sample"}


_BRIDGES = _table(
    "Bridge Openings",
    [("Bridge", "TEXT"), ("City", "VARCHAR(40)"), ("Opened", "YEAR"), ("Span (m)", "DECIMAL(6,1)"), ("Type", "TEXT")],
    [
        ["Harbour Gate Bridge", "Port Alden", "1932", "503.0", "arch"],
        ["Millrace Crossing", "Brennford", "1961", "1280.5", "suspension"],
        ["Old Weir Bridge", "Brennford", "1898", "64.2", "arch"],
        ["Kestrel Viaduct", "Hollin", "1947", "91.4", "beam"],
        ["Saltmarsh Link", "Port Alden", "2004", "1104.0", "cable-stayed"],
        ["Tollgate Span", "Hollin", "1975", "240.8", "beam"],
    ],
)
_CHART = _table(
    "Album Chart: 1999",
    [("Artist", "TEXT"), ("Title", "TEXT"), ("Weeks", "INT"), ("Peak", "INT")],
    [
        ["The Lanterns", "Don't Stop Now", "7", "2"],
        ["Mira Vale", "Northern Lights", "12", "1"],
        ["Copperline", "Static Hearts", "3", "44"],
        ["The Lanterns", "Paper Moons", "5", "9"],
        ["Juno Park", "Slow Rivers", "2", "51"],
    ],
)
_HUTS = _table(
    "mountain_huts",
    [("Hut", "TEXT"), ("Range", "TEXT"), ("Altitude (m)", "INT"), ("Beds", "INTEGER"), ("Opened", "DATE")],
    [
        ["Ravenscar Hut", "Northern Fells", "2140", "24", "June 3, 1921"],
        ["Glasswater Refuge", "Northern Fells", "1875", "40", "July 19, 1954"],
        ["Eagle Saddle Hut", "Spine Ridge", "2630", "18", "May 30, 1908"],
        ["Tarn Hollow Hut", "Spine Ridge", "2210", "32", "June 11, 1988"],
    ],
)
_MARATHON = _table(
    "Marathon Winners",
    [("Year", "INT"), ("Winner", "TEXT"), ("Country", "TEXT"), ("Time", "TIME")],
    [
        ["2015", "Abel Korir", "Kenya", "2:09:14"],
        ["2016", "Tomás Ruiz", "Spain", "2:11:02"],
        ["2017", "Abel Korir", "Kenya", "2:08:47"],
        ["2018", "Li Wen", "China", "2:10:30"],
    ],
)

TRAIN: list[dict[str, Any]] = [
    _question("Which huts in the Spine Ridge range lie above 2,200 metres?", _HUTS, "comparison",
              ["Eagle Saddle Hut", "Tarn Hollow Hut"],
              "SELECT Hut FROM mountain_huts WHERE `Range` = 'Spine Ridge' AND `Altitude (m)` > 2200;"),
    _question("How many beds do the Northern Fells huts have altogether?", _HUTS, "aggregation-SUM", ["64.0"],
              "SELECT SUM(Beds) FROM mountain_huts WHERE `Range` = 'Northern Fells';"),
    _question("Who won the marathon in 2016?", _MARATHON, "other", ["Tomás Ruiz"],
              "SELECT Winner FROM `Marathon Winners` WHERE Year = 2016;"),
    _change("Li Wen also won in 2019, in 2:07:55. Add this win to the table.", _MARATHON, "INSERT",
            "INSERT INTO `Marathon Winners` (`Year`, `Winner`, `Country`, `Time`) "
            "VALUES ('2019', 'Li Wen', 'China', '2:07:55')"),
    _change("Glasswater Refuge has been extended to 48 beds. Update the table.", _HUTS, "UPDATE",
            "UPDATE mountain_huts SET Beds = '48' WHERE Hut = 'Glasswater Refuge'"),
]

TEST: list[dict[str, Any]] = [
    _question("How many bridges in the table were opened before 1950?", _BRIDGES, "counting", ["3.0"],
              "SELECT COUNT(*) FROM `Bridge Openings` WHERE Opened < 1950;"),
    _question("which bridge has the longest span?", _BRIDGES, "ranking", ["Millrace Crossing"],
              "SELECT Bridge FROM `Bridge Openings` ORDER BY `Span (m)` DESC LIMIT 1;"),
    _question("How many weeks was \"Don't Stop Now\" on the chart?", _CHART, "other", ["7"],
              "SELECT Weeks FROM `Album Chart: 1999` WHERE Title = 'Don\\'t Stop Now';"),
    _change("The span of the Tollgate Span was re-measured as 242.5 metres. Update the table.", _BRIDGES, "UPDATE",
            "UPDATE `Bridge Openings` SET `Span (m)` = '242.5' WHERE `Bridge` = 'Tollgate Span'"),
    _change("Add the album 'Glass Harbour' by Mira Vale: 4 weeks on the chart, peak position 6.", _CHART, "INSERT",
            "INSERT INTO `Album Chart: 1999` (Artist, Title, Weeks, Peak) "
            "VALUES ('Mira Vale', 'Glass Harbour', 4, 6);"),
    _change("Remove every album whose peak position was below 40 (a number above 40).", _CHART, "DELETE",
            "DELETE FROM `Album Chart: 1999` WHERE Peak > 40"),
]
