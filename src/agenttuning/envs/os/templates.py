"""Task templates for the ``os`` environment, part 1: files and text, archives, links and disk usage.

A template is a function of a seeded :class:`random.Random` that returns one :class:`Candidate`: the question in
plain English (saying how to write the answer), a bash ``init`` script that builds the situation inside the sandbox,
the expert's bash ``solution``, and either the exact ``answer`` (computed here in Python from the data the init
script writes, so the solution's output is checked against an independent computation) or a bash ``check`` script
for a task that changes the system. Everything the init script writes is generated here, so a task is the same on
every machine; only the sandbox's clock (for relative dates) and process ids vary, and no answer depends on them.

The tasks work under :data:`HOME`, the agent's home and working directory in the sandbox. The system templates
(permissions, users and groups, processes, scheduling, environment variables) are in :mod:`.system_templates`.
"""

from __future__ import annotations

import hashlib
import random
import shlex
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

HOME = "/root"  # the agent's home and working directory inside the sandbox
_EOF = "__OS_TASK_EOF__"
_STAGE = f"mkdir -p {HOME}/.stage && cd {HOME}/.stage"  # where archives are put together, removed after
_UNSTAGE = f"cd {HOME} && rm -rf {HOME}/.stage"


@dataclass(frozen=True)
class Candidate:
    """One derived task before selection: exactly one of ``answer`` (a question) and ``check`` (a change)."""

    template: str
    question: str
    init: str
    solution: str
    answer: str | None = None
    check: str | None = None


Template = Callable[[random.Random], Candidate]

WORDS = ("apple river stone cloud maple tiger ocean piano lemon rocket garden silver forest candle mirror planet "
         "violet shadow harbor meadow falcon copper winter desert island canyon valley bridge castle engine "
         "lantern marble needle orchid pepper quartz saddle thunder velvet walnut yogurt zebra anchor basket "
         "cactus dolphin ember feather glacier hammer igloo jacket kettle ladder magnet nectar").split()
NAMES = ("alice bruno carla david elena farid greta hugo irene jonas karim laura marco nadia oscar paula quinn rosa "
         "samir tania ulric vera walter xenia yusuf zoe").split()
CITIES = "Lyon Porto Turin Ghent Basel Bergen Krakow Seville Utrecht Malmo Graz Leeds Bilbao Aarhus Tartu".split()


def write_file(path: str, text: str) -> str:
    """Bash that creates ``path`` (and its folder) holding exactly ``text`` (which must end with a newline)."""
    assert text.endswith("\n") and _EOF not in text
    folder = path.rsplit("/", 1)[0]
    return f"mkdir -p {shlex.quote(folder)}\ncat > {shlex.quote(path)} <<'{_EOF}'\n{text}{_EOF}\n"


def sized_file(path: str, size: int) -> str:
    """Bash that creates ``path`` with ``size`` bytes (real blocks, not a sparse file)."""
    return f"head -c {size} /dev/zero > {shlex.quote(path)}\n"


def content_is(path: str, text: str) -> str:
    """A check line that passes when ``path`` holds exactly ``text`` (compared by SHA-256)."""
    digest = hashlib.sha256(text.encode()).hexdigest()
    return f'[ "$(sha256sum < {shlex.quote(path)} | cut -d" " -f1)" = "{digest}" ] || exit 1\n'


def starts_with(path: str, text: str) -> str:
    """A check line that passes when the first lines of ``path`` are exactly ``text`` (compared by SHA-256)."""
    digest = hashlib.sha256(text.encode()).hexdigest()
    n = text.count("\n")
    return f'[ "$(head -n {n} {shlex.quote(path)} | sha256sum | cut -d" " -f1)" = "{digest}" ] || exit 1\n'


def lines(items: list[str]) -> str:
    return "".join(f"{item}\n" for item in items)


def word_line(rng: random.Random, pool: list[str] | tuple[str, ...] = WORDS, lo: int = 3, hi: int = 8) -> str:
    return " ".join(rng.choice(pool) for _ in range(rng.randint(lo, hi)))


# --------------------------------------------------------------------------------------------------------------
# Files and text


def log_level_count(rng: random.Random) -> Candidate:
    name = rng.choice(["app", "server", "worker", "api", "billing", "gateway", "auth", "mailer"])
    levels = ["INFO", "WARN", "ERROR", "DEBUG"]
    target = rng.choice(levels)
    rows = [f"2024-03-{rng.randint(1, 28):02d} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d} "
            f"{rng.choice(levels)} {word_line(rng, lo=2, hi=6)}" for _ in range(rng.randint(15, 40))]
    rows.append(f"2024-03-29 12:00 {target} {word_line(rng, lo=2, hi=6)}")
    path = f"{HOME}/logs/{name}.log"
    count = sum(r.split()[2] == target for r in rows)
    return Candidate("log_level_count",
                     f"The log {path} has one entry per line; the third field of each line is its level. How many "
                     f"entries have the level {target}? Answer with the number only.",
                     write_file(path, lines(rows)), f"awk '$3 == \"{target}\"' {path} | wc -l", answer=str(count))


def word_count(rng: random.Random) -> Candidate:
    path = f"{HOME}/notes/{rng.choice(NAMES)}-{rng.choice(WORDS)}.txt"
    rows = [word_line(rng, lo=1, hi=9) for _ in range(rng.randint(4, 14))]
    return Candidate("word_count",
                     f"How many words does the file {path} contain? Words are separated by spaces or line breaks. "
                     "Answer with the number only.",
                     write_file(path, lines(rows)), f"wc -w < {path}", answer=str(sum(len(r.split()) for r in rows)))


def files_larger_than(rng: random.Random) -> Candidate:
    folder = f"{HOME}/data/{rng.choice(WORDS)}"
    limit = rng.choice([8_000, 10_000, 16_000, 20_000])
    names = rng.sample(WORDS, rng.randint(5, 9))
    sizes = [rng.choice([rng.randint(100, limit - 3000), rng.randint(limit + 3000, limit * 3)]) for _ in names]
    sizes[0] = rng.randint(limit + 3000, limit * 3)  # at least one
    init = f"mkdir -p {folder}\n" + "".join(sized_file(f"{folder}/{n}.bin", s) for n, s in zip(names, sizes))
    return Candidate("files_larger_than",
                     f"How many files in {folder} are larger than {limit} bytes? Answer with the number only.",
                     init, f"find {folder} -type f -size +{limit}c | wc -l", answer=str(sum(s > limit for s in sizes)))


def count_extension(rng: random.Random) -> Candidate:
    root = f"{HOME}/{rng.choice(['project', 'repo', 'workspace', 'site'])}-{rng.choice(WORDS)}"
    exts = ["py", "md", "txt", "csv", "json"]
    target = rng.choice(exts)
    files = {f"{root}/{d}/{w}.{rng.choice(exts)}" for d in ("", "src", "docs", "src/lib", "tests")
             for w in rng.sample(WORDS, rng.randint(1, 5))}
    files.add(f"{root}/src/{rng.choice(WORDS)}.{target}")
    files = {f.replace("//", "/") for f in files}
    init = "".join(f"mkdir -p {f.rsplit('/', 1)[0]} && echo {i} > {f}\n" for i, f in enumerate(sorted(files)))
    return Candidate("count_extension",
                     f"How many files with the extension .{target} are there in {root} and all of its "
                     "subdirectories? Answer with the number only.",
                     init, f"find {root} -type f -name '*.{target}' | wc -l",
                     answer=str(sum(f.endswith(f".{target}") for f in files)))


def newest_file(rng: random.Random) -> Candidate:
    folder = f"{HOME}/{rng.choice(['reports', 'exports', 'drafts', 'backups'])}-{rng.choice(NAMES)}"
    names = [f"{w}.txt" for w in rng.sample(WORDS, rng.randint(4, 8))]
    stamps = rng.sample(range(1, 2000), len(names))  # distinct hours into 2024
    newest = rng.random() < 0.5
    init = f"mkdir -p {folder}\n" + "".join(
        f"echo {n} > {folder}/{n} && touch -d '{datetime(2024, 1, 1) + timedelta(hours=h):%Y-%m-%d %H:%M}' "
        f"{folder}/{n}\n" for n, h in zip(names, stamps))
    pick = max if newest else min
    answer = names[stamps.index(pick(stamps))]
    which = "most recently" if newest else "least recently (longest ago)"
    return Candidate("newest_file",
                     f"Which file in {folder} was modified {which}? Answer with the file name only, without "
                     "the directory.",
                     init, f"ls -t {folder} | {'head' if newest else 'tail'} -n 1", answer=answer)


def sum_numbers(rng: random.Random) -> Candidate:
    path = f"{HOME}/numbers/{rng.choice(WORDS)}-{rng.randint(1, 99)}.txt"
    values = [rng.randint(-50, 500) for _ in range(rng.randint(8, 30))]
    return Candidate("sum_numbers",
                     f"The file {path} holds one integer per line. What is the sum of all of them? Answer with "
                     "the number only.",
                     write_file(path, lines([str(v) for v in values])), f"awk '{{s += $1}} END {{print s}}' {path}",
                     answer=str(sum(values)))


def most_frequent_word(rng: random.Random) -> Candidate:
    path = f"{HOME}/texts/{rng.choice(NAMES)}.txt"
    pool = rng.sample(WORDS, 8)
    while True:
        rows = [word_line(rng, pool, 3, 9) for _ in range(rng.randint(5, 10))]
        (top, n), (_, second) = Counter(" ".join(rows).split()).most_common(2)
        if n > second:
            break
    return Candidate("most_frequent_word",
                     f"Which word occurs most often in {path}? Answer with the word only.",
                     write_file(path, lines(rows)),
                     f"tr -s ' ' '\\n' < {path} | sort | uniq -c | sort -rn | head -n 1 | awk '{{print $2}}'",
                     answer=top)


def _people_csv(rng: random.Random) -> list[tuple[str, str, int]]:
    cities = CITIES[: rng.randint(4, 10)]
    return [(n, rng.choice(cities), s) for n, s in zip(rng.sample(NAMES, 14), rng.sample(range(10, 999), 14))]


def csv_distinct(rng: random.Random) -> Candidate:
    path = f"{HOME}/tables/{rng.choice(WORDS)}.csv"
    people = _people_csv(rng)[: rng.randint(8, 14)]
    text = lines(["id,name,city,score"] + [f"{i},{n},{c},{s}" for i, (n, c, s) in enumerate(people, 1)])
    return Candidate("csv_distinct",
                     f"The CSV file {path} has a header line and the columns id,name,city,score. How many different "
                     "cities appear in its city column? Answer with the number only.",
                     write_file(path, text), f"tail -n +2 {path} | cut -d, -f3 | sort -u | wc -l",
                     answer=str(len({c for _, c, _ in people})))


def csv_top_scorer(rng: random.Random) -> Candidate:
    path = f"{HOME}/tables/{rng.choice(['scores', 'results', 'ranking', 'league'])}-{rng.choice(WORDS)}.csv"
    people = _people_csv(rng)[: rng.randint(6, 14)]  # distinct scores
    lowest = rng.random() < 0.3
    target = (min if lowest else max)(people, key=lambda p: p[2])[0]
    text = lines(["id,name,city,score"] + [f"{i},{n},{c},{s}" for i, (n, c, s) in enumerate(people, 1)])
    return Candidate("csv_top_scorer",
                     f"The CSV file {path} has a header line and the columns id,name,city,score. Which name has the "
                     f"{'lowest' if lowest else 'highest'} score? Answer with the name only.",
                     write_file(path, text),
                     f"tail -n +2 {path} | sort -t, -k4 -n | {'head' if lowest else 'tail'} -n 1 | cut -d, -f2",
                     answer=target)


def largest_file(rng: random.Random) -> Candidate:
    folder = f"{HOME}/{rng.choice(['media', 'uploads', 'assets', 'downloads'])}-{rng.choice(NAMES)}"
    names = [f"{w}.{rng.choice(['png', 'mp3', 'pdf', 'zip'])}" for w in rng.sample(WORDS, rng.randint(4, 8))]
    sizes = rng.sample(range(1_000, 90_000, 997), len(names))
    init = f"mkdir -p {folder}\n" + "".join(sized_file(f"{folder}/{n}", s) for n, s in zip(names, sizes))
    return Candidate("largest_file",
                     f"Which file in {folder} is the largest? Answer with the file name only, without the directory.",
                     init, f"ls -S {folder} | head -n 1", answer=names[sizes.index(max(sizes))])


def hidden_files(rng: random.Random) -> Candidate:
    folder = f"{HOME}/{rng.choice(['box', 'stash', 'config', 'vault'])}-{rng.choice(WORDS)}"
    shown = rng.sample(WORDS, rng.randint(1, 5))
    hidden = rng.sample(WORDS, rng.randint(1, 6))
    init = (f"mkdir -p {folder}/.cache {folder}/sub\n" + "".join(f"echo x > {folder}/{w}\n" for w in shown)
            + "".join(f"echo x > {folder}/.{w}\n" for w in hidden) + f"echo x > {folder}/sub/.{rng.choice(WORDS)}\n")
    return Candidate("hidden_files",
                     f"How many hidden files (names starting with a dot; not directories, and not counting files in "
                     f"subdirectories) are directly inside {folder}? Answer with the number only.",
                     init, f"find {folder} -maxdepth 1 -type f -name '.*' | wc -l", answer=str(len(hidden)))


def first_line_of_word(rng: random.Random) -> Candidate:
    path = f"{HOME}/books/{rng.choice(WORDS)}.txt"
    target = rng.choice([w for w in WORDS if not any(w != o and w in o for o in WORDS)])
    others = [w for w in WORDS if w != target]
    rows = [word_line(rng, others, 2, 7) for _ in range(rng.randint(6, 20))]
    at = rng.randint(2, len(rows))
    rows[at - 1] += f" {target}"
    for i in range(at, len(rows)):
        if rng.random() < 0.3:
            rows[i] = f"{target} {rows[i]}"
    return Candidate("first_line_of_word",
                     f"On which line of {path} does the word \"{target}\" appear for the first time? Lines are "
                     "numbered from 1. Answer with the line number only.",
                     write_file(path, lines(rows)), f"grep -n -w {target} {path} | head -n 1 | cut -d: -f1",
                     answer=str(at))


def unique_ips(rng: random.Random) -> Candidate:
    path = f"{HOME}/logs/{rng.choice(['access', 'nginx', 'web', 'proxy'])}-{rng.choice(WORDS)}.log"
    ips = [f"10.{rng.randint(0, 3)}.{rng.randint(0, 9)}.{rng.randint(1, 254)}" for _ in range(rng.randint(3, 12))]
    rows = _access_rows(rng, ips)
    return Candidate("unique_ips",
                     f"{path} is a web server access log; the first field of each line is the client's IP address. "
                     "How many different client IP addresses does it contain? Answer with the number only.",
                     write_file(path, lines(rows)), f"cut -d' ' -f1 {path} | sort -u | wc -l",
                     answer=str(len({r.split()[0] for r in rows})))


def _access_rows(rng: random.Random, ips: list[str]) -> list[str]:
    return [f"{rng.choice(ips)} - - [10/Mar/2024:{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00] "
            f"\"GET /{rng.choice(WORDS)} HTTP/1.1\" {rng.choice([200, 200, 200, 301, 404, 500])} "
            f"{rng.randint(90, 9000)}"
            for _ in range(rng.randint(10, 30))]


def status_count(rng: random.Random) -> Candidate:
    path = f"{HOME}/logs/{rng.choice(['access', 'nginx', 'web', 'proxy'])}-{rng.randint(10, 99)}.log"
    rows = _access_rows(rng, [f"192.168.{rng.randint(0, 9)}.{i}" for i in range(1, 6)])
    status = rng.choice(sorted({r.split()[7] for r in rows}))
    return Candidate("status_count",
                     f"{path} is a web server access log; the HTTP status code is the field right after the quoted "
                     f"request. How many requests got the status {status}? Answer with the number only.",
                     write_file(path, lines(rows)), f"awk '$8 == {status}' {path} | wc -l",
                     answer=str(sum(r.split()[7] == status for r in rows)))


def gzip_lines(rng: random.Random) -> Candidate:
    path = f"{HOME}/data/{rng.choice(WORDS)}-{rng.randint(1, 99)}.csv"
    rows = [f"{i},{rng.choice(NAMES)},{rng.randint(1, 99)}" for i in range(rng.randint(5, 60))]
    return Candidate("gzip_lines",
                     f"{path}.gz is a gzip-compressed text file. How many lines does it have once decompressed? "
                     "Answer with the number only.",
                     write_file(path, lines(rows)) + f"gzip {path}\n", f"zcat {path}.gz | wc -l", answer=str(len(rows)))


def replace_word(rng: random.Random) -> Candidate:
    path = f"{HOME}/conf/{rng.choice(['app', 'service', 'db', 'cache', 'queue'])}.conf"
    old, new = rng.sample(["staging", "localhost", "oldhost", "testing", "legacy"], 2)
    keys = rng.sample(["host", "backup_host", "mirror", "log_target", "replica", "admin_url", "metrics"], 5)
    values = [rng.choice([old, f"{old}.example.org", f"{rng.choice(WORDS)}.example.org"]) for _ in keys]
    values[0] = old
    text = lines([f"# {word_line(rng, lo=2, hi=4)}"] + [f"{k} = {v}" for k, v in zip(keys, values)]
                 + [f"port = {rng.randint(1024, 9999)}"])
    return Candidate("replace_word",
                     f"In the file {path}, replace every occurrence of \"{old}\" with \"{new}\". Change nothing else "
                     "in the file.",
                     write_file(path, text), f"sed -i 's/{old}/{new}/g' {path}",
                     check=content_is(path, text.replace(old, new)))


def sort_lines(rng: random.Random) -> Candidate:
    path = f"{HOME}/lists/{rng.choice(NAMES)}.txt"
    items = rng.sample(WORDS, rng.randint(5, 14))
    reverse = rng.random() < 0.3
    return Candidate("sort_lines",
                     f"Sort the lines of {path} in {'reverse ' if reverse else ''}alphabetical order, in place: the "
                     "file must keep the same lines, now sorted.",
                     write_file(path, lines(items)), f"sort {'-r ' if reverse else ''}-o {path} {path}",
                     check=content_is(path, lines(sorted(items, reverse=reverse))))


def delete_by_extension(rng: random.Random) -> Candidate:
    root = f"{HOME}/{rng.choice(['cache', 'build', 'tmpfiles', 'scratch'])}-{rng.choice(NAMES)}"
    ext = rng.choice(["tmp", "bak", "swp", "old"])
    files = {f"{root}/{d}{w}.{e}" for d in ("", "a/", "a/b/", "c/") for w in rng.sample(WORDS, 3)
             for e in [rng.choice([ext, "txt", "dat"])]}
    files |= {f"{root}/a/{rng.choice(WORDS)}.{ext}", f"{root}/{rng.choice(WORDS)}.txt"}
    keep = sorted(f for f in files if not f.endswith(f".{ext}"))
    init = "".join(f"mkdir -p {f.rsplit('/', 1)[0]} && echo x > {f}\n" for f in sorted(files))
    check = (f"[ -z \"$(find {root} -name '*.{ext}')\" ] || exit 1\n"
             + "".join(f"[ -f {f} ] || exit 1\n" for f in keep))
    return Candidate("delete_by_extension",
                     f"Delete every file whose name ends in .{ext} in {root} and all of its subdirectories. Keep "
                     "every other file.",
                     init, f"find {root} -type f -name '*.{ext}' -delete", check=check)


def move_files(rng: random.Random) -> Candidate:
    who = rng.choice(NAMES)
    src, dst = f"{HOME}/inbox-{who}", f"{HOME}/{rng.choice(['photos', 'pictures', 'images', 'gallery'])}-{who}"
    ext = rng.choice(["jpg", "png", "gif"])
    moved = rng.sample(WORDS, rng.randint(2, 6))
    stay = [f"{w}.{rng.choice(['txt', 'pdf'])}" for w in rng.sample(WORDS, rng.randint(1, 4))]
    init = f"mkdir -p {src}\n" + "".join(f"echo {w} > {src}/{w}.{ext}\n" for w in moved) + "".join(
        f"echo x > {src}/{s}\n" for s in stay)
    check = "".join(f"[ -f {dst}/{w}.{ext} ] && [ ! -e {src}/{w}.{ext} ] || exit 1\n" for w in moved) + "".join(
        f"[ -f {src}/{s} ] || exit 1\n" for s in stay)
    return Candidate("move_files",
                     f"Move every .{ext} file from {src} into the directory {dst} (create it if it does not exist). "
                     "Leave the other files in place.",
                     init, f"mkdir -p {dst} && mv {src}/*.{ext} {dst}/", check=check)


# --------------------------------------------------------------------------------------------------------------
# Archives


def _tree(rng: random.Random, top: str) -> list[str]:
    files = {f"{top}/{d}{w}.{rng.choice(['txt', 'cfg', 'log'])}" for d in ("", "docs/", "data/", "data/raw/")
             for w in rng.sample(WORDS, rng.randint(0, 4))}
    files.add(f"{top}/{rng.choice(WORDS)}.md")
    return sorted(files)


def tar_count_files(rng: random.Random) -> Candidate:
    top = rng.choice(WORDS)
    archive = f"{HOME}/backup/{top}-{rng.randint(2019, 2024)}.tar.gz"
    files = _tree(rng, top)
    init = (f"{_STAGE}\n"
            + "".join(f"mkdir -p {f.rsplit('/', 1)[0]} && echo {i} > {f}\n" for i, f in enumerate(files))
            + f"mkdir -p {HOME}/backup && tar -czf {archive} {top}\n{_UNSTAGE}\n")
    return Candidate("tar_count_files",
                     f"How many regular files (not directories) does the archive {archive} contain? Answer with the "
                     "number only.",
                     init, f"tar -tzf {archive} | grep -vc '/$'", answer=str(len(files)))


def tar_read_file(rng: random.Random) -> Candidate:
    top = rng.choice(WORDS)
    archive = f"{HOME}/{rng.choice(['archive', 'delivery', 'incoming'])}/{top}.tar.gz"
    names = rng.sample(WORDS, 5)
    values = [rng.randint(100, 99999) for _ in names]
    dirs = [rng.choice(["", "keys/", "keys/old/", "misc/"]) for _ in names]
    target = rng.randrange(len(names))
    init = (f"{_STAGE}\n"
            + "".join(f"mkdir -p {top}/{d} && echo {v} > {top}/{d}{n}.txt\n" for n, v, d in zip(names, values, dirs))
            + f"mkdir -p {archive.rsplit('/', 1)[0]} && tar -czf {archive} {top}\n{_UNSTAGE}\n")
    return Candidate("tar_read_file",
                     f"The archive {archive} contains, somewhere inside, a file named {names[target]}.txt. What "
                     "number is written in that file? Answer with the number only.",
                     init, f"tar -xzOf {archive} --wildcards '*/{names[target]}.txt'", answer=str(values[target]))


def create_tar(rng: random.Random) -> Candidate:
    src = f"{HOME}/{rng.choice(['logs', 'journal', 'records'])}"
    archive = f"{HOME}/out/{rng.choice(WORDS)}.tar.gz"
    ext = rng.choice(["log", "csv"])
    wanted = sorted(f"{w}.{ext}" for w in rng.sample(WORDS, rng.randint(2, 5)))
    other = [f"{w}.{rng.choice(['txt', 'md'])}" for w in rng.sample(WORDS, 2)]
    init = f"mkdir -p {src}\n" + "".join(f"echo {f} > {src}/{f}\n" for f in wanted + other)
    check = (f"[ -f {archive} ] || exit 1\n"
             f"got=$(tar -tzf {archive} | grep -v '/$' | sed 's#.*/##' | sort | paste -sd,)\n"
             f"[ \"$got\" = \"{','.join(wanted)}\" ]\n")
    return Candidate("create_tar",
                     f"Create a gzip-compressed tar archive {archive} that contains every .{ext} file of {src} and "
                     "no other file.",
                     init, f"mkdir -p {HOME}/out && (cd {src} && tar -czf {archive} *.{ext})", check=check)


# --------------------------------------------------------------------------------------------------------------
# Links and disk usage


def symlink_target(rng: random.Random) -> Candidate:
    app = rng.choice(WORDS)
    versions = sorted({f"{rng.randint(1, 4)}.{rng.randint(0, 12)}.{rng.randint(0, 9)}" for _ in range(5)})
    link = rng.choice(["current", "stable", "live"])
    target = f"{HOME}/releases/{app}-{rng.choice(versions)}"
    links = f"{HOME}/{app}-links"
    init = "".join(f"mkdir -p {HOME}/releases/{app}-{v}\n" for v in versions) + (
        f"mkdir -p {links} && ln -s {target} {links}/{link}\n"
        f"ln -s {HOME}/releases/{app}-{versions[0]} {links}/previous-{link}\n")
    return Candidate("symlink_target",
                     f"Which path does the symbolic link {links}/{link} point to? Answer with the target path "
                     "exactly as stored in the link.",
                     init, f"readlink {links}/{link}", answer=target)


def broken_symlinks(rng: random.Random) -> Candidate:
    folder = f"{HOME}/{rng.choice(['shortcuts', 'links', 'bin-links'])}-{rng.choice(NAMES)}"
    names = rng.sample(WORDS, rng.randint(3, 9))
    broken = [rng.random() < 0.5 for _ in names]
    broken[0] = True
    init = f"mkdir -p {folder} {HOME}/targets\n" + "".join(
        (f"ln -s {HOME}/targets/{n}-gone {folder}/{n}\n" if b
         else f"echo x > {HOME}/targets/{n} && ln -s {HOME}/targets/{n} {folder}/{n}\n")
        for n, b in zip(names, broken))
    return Candidate("broken_symlinks",
                     f"How many of the symbolic links in {folder} are broken (point to something that does not "
                     "exist)? Answer with the number only.",
                     init, f"find {folder} -xtype l | wc -l", answer=str(sum(broken)))


def make_symlink(rng: random.Random) -> Candidate:
    tool = rng.choice(WORDS)
    version = f"{rng.randint(1, 9)}.{rng.randint(0, 20)}"
    target = f"{HOME}/opt/{tool}-{version}/bin/{tool}"
    link = f"{HOME}/bin/{tool}"
    init = f"mkdir -p {HOME}/opt/{tool}-{version}/bin {HOME}/bin\nprintf '#!/bin/sh\\necho {tool}\\n' > {target}\n"
    return Candidate("make_symlink",
                     f"Create a symbolic link {link} that points to {target} (use that absolute path as the target).",
                     init, f"ln -s {target} {link}",
                     check=f"[ -L {link} ] && [ \"$(readlink {link})\" = \"{target}\" ]\n")


def biggest_subdir(rng: random.Random) -> Candidate:
    root = f"{HOME}/{rng.choice(['storage', 'volumes', 'shares'])}-{rng.choice(NAMES)}"
    dirs = rng.sample(WORDS, rng.randint(3, 6))
    totals = rng.sample(range(8, 60), len(dirs))  # in units of 4 KiB blocks
    top = max(totals)
    totals = [t if t == top else min(t, top // 2) for t in totals]
    init = ""
    for d, t in zip(dirs, totals):
        init += f"mkdir -p {root}/{d}/inner\n"
        parts = [t // 2, t - t // 2]
        init += sized_file(f"{root}/{d}/a.dat", parts[0] * 4096) + sized_file(f"{root}/{d}/inner/b.dat",
                                                                               parts[1] * 4096)
    return Candidate("biggest_subdir",
                     f"Which subdirectory of {root} uses the most disk space, counting everything inside it? "
                     "Answer with the directory name only.",
                     init, f"du -s {root}/* | sort -n | tail -n 1 | cut -f2 | xargs basename",
                     answer=dirs[totals.index(top)])


def total_bytes(rng: random.Random) -> Candidate:
    folder = f"{HOME}/{rng.choice(['logs', 'spool', 'dumps'])}-{rng.choice(WORDS)}"
    ext = rng.choice(["log", "dump", "out"])
    names = rng.sample(WORDS, rng.randint(3, 7))
    sizes = [rng.randint(10, 5000) for _ in names]
    exts = [ext if i == 0 or rng.random() < 0.6 else "txt" for i in range(len(names))]
    init = f"mkdir -p {folder}/nested\n" + "".join(
        sized_file(f"{folder}/{n}.{e}", s) for n, s, e in zip(names, sizes, exts)) + sized_file(
        f"{folder}/nested/extra.{ext}", 777)
    return Candidate("total_bytes",
                     f"What is the total size in bytes of the .{ext} files directly inside {folder} (not in its "
                     "subdirectories)? Answer with the number only.",
                     init, f"find {folder} -maxdepth 1 -type f -name '*.{ext}' -printf '%s\\n' | "
                           "awk '{s += $1} END {print s}'",
                     answer=str(sum(s for s, e in zip(sizes, exts) if e == ext)))


FILE_TEMPLATES: tuple[Template, ...] = (
    log_level_count, word_count, files_larger_than, count_extension, newest_file, sum_numbers, most_frequent_word,
    csv_distinct, csv_top_scorer, largest_file, hidden_files, first_line_of_word, unique_ips, status_count, gzip_lines,
    replace_word, sort_lines, delete_by_extension, move_files, tar_count_files, tar_read_file, create_tar,
    symlink_target, broken_symlinks, make_symlink, biggest_subdir, total_bytes,
)
