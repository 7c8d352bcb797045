"""Task templates for the ``os`` environment, part 2: permissions, users and groups, processes, scheduling and
environment variables (see :mod:`.templates` for what a template is).

Users and groups live in files of the ``/etc/passwd`` and ``/etc/group`` formats under the work dir, because the
sandbox's ``/etc`` is a read-only, curated copy (``useradd`` cannot write it, and should not). Scheduled jobs live in
a crontab-format file for the same reason (no cron daemon runs in the sandbox). Processes are real: the init script
starts copies of ``sleep`` under task-specific names (a process's name is its executable's file name), detached from
the init shell so they outlive it, and the checks look them up by name with ``pgrep`` (a zombie counts as stopped).
"""

from __future__ import annotations

import random

from agenttuning.envs.os.templates import HOME, NAMES, WORDS, Candidate, Template, lines, starts_with, write_file

# --------------------------------------------------------------------------------------------------------------
# Permissions

_MODES = ["600", "640", "644", "660", "664", "700", "711", "750", "755", "444", "400"]


def count_executable(rng: random.Random) -> Candidate:
    folder = f"{HOME}/{rng.choice(['tools', 'scripts', 'utils', 'helpers'])}-{rng.choice(WORDS)}"
    names = rng.sample(WORDS, rng.randint(4, 9))
    modes = [rng.choice(_MODES) for _ in names]
    modes[0] = rng.choice(["700", "750", "755", "711"])
    init = f"mkdir -p {folder}\n" + "".join(f"echo x > {folder}/{n} && chmod {m} {folder}/{n}\n"
                                            for n, m in zip(names, modes))
    return Candidate("count_executable",
                     f"How many files in {folder} have the execute permission for their owner? Answer with the "
                     "number only.",
                     init, f"find {folder} -maxdepth 1 -type f -perm -u=x | wc -l",
                     answer=str(sum(int(m[0]) & 1 for m in modes)))


def world_writable(rng: random.Random) -> Candidate:
    folder = f"{HOME}/{rng.choice(['shared', 'public', 'common', 'exchange'])}-{rng.choice(NAMES)}"
    names = rng.sample(WORDS, rng.randint(4, 8))
    modes = [rng.choice(["600", "640", "644", "660", "664", "755", "750"]) for _ in names]
    target = rng.randrange(len(names))
    modes[target] = rng.choice(["666", "777", "646", "662"])
    init = f"mkdir -p {folder}\n" + "".join(f"echo x > {folder}/{n} && chmod {m} {folder}/{n}\n"
                                            for n, m in zip(names, modes))
    return Candidate("world_writable",
                     f"Exactly one file in {folder} can be written by every user (other users have write "
                     "permission). Which one? Answer with the file name only.",
                     init, f"find {folder} -type f -perm -o=w -printf '%f\\n'", answer=names[target])


def octal_mode(rng: random.Random) -> Candidate:
    folder = f"{HOME}/{rng.choice(['secrets', 'keys', 'etc', 'private'])}"
    path = f"{folder}/{rng.choice(WORDS)}.{rng.choice(['key', 'pem', 'conf'])}"
    mode = rng.choice(_MODES)
    init = f"mkdir -p {path.rsplit('/', 1)[0]} && echo x > {path} && chmod {mode} {path}\n"
    return Candidate("octal_mode",
                     f"What are the permissions of {path}, as a three-digit octal number (for example 640)? Answer "
                     "with the three digits only.",
                     init, f"stat -c %a {path}", answer=mode)


def make_private(rng: random.Random) -> Candidate:
    path = f"{HOME}/{rng.choice(['secrets', 'keys', 'private'])}/{rng.choice(NAMES)}-{rng.choice(WORDS)}.txt"
    mode = rng.choice(["644", "664", "666", "755"])
    init = f"mkdir -p {path.rsplit('/', 1)[0]} && echo secret > {path} && chmod {mode} {path}\n"
    return Candidate("make_private",
                     f"Change the permissions of {path} so that its owner can read and write it and nobody else "
                     "can read, write or execute it (mode 600).",
                     init, f"chmod 600 {path}", check=f"[ \"$(stat -c %a {path})\" = 600 ]\n")


def make_scripts_executable(rng: random.Random) -> Candidate:
    folder = f"{HOME}/{rng.choice(['scripts', 'jobs', 'hooks'])}-{rng.choice(WORDS)}"
    scripts = rng.sample(WORDS, rng.randint(2, 5))
    others = rng.sample([w for w in WORDS if w not in scripts], rng.randint(1, 3))
    init = f"mkdir -p {folder}\n" + "".join(f"echo 'echo {s}' > {folder}/{s}.sh\n" for s in scripts) + "".join(
        f"echo x > {folder}/{o}.txt\n" for o in others) + f"chmod 644 {folder}/*\n"
    check = (f"[ -z \"$(find {folder} -name '*.sh' ! -perm -a=x)\" ] || exit 1\n"
             f"[ -z \"$(find {folder} -type f ! -name '*.sh' -perm /a=x)\" ]\n")
    return Candidate("make_scripts_executable",
                     f"Make every .sh file in {folder} executable by everyone (owner, group and others). The other "
                     "files must stay not executable.",
                     init, f"chmod a+x {folder}/*.sh", check=check)


# --------------------------------------------------------------------------------------------------------------
# Users and groups (files in the /etc/passwd and /etc/group formats)

_SHELLS = ["/bin/bash", "/bin/sh", "/usr/sbin/nologin", "/bin/zsh"]
_SYSTEM = ["root:x:0:0:root:/root:/bin/bash", "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin",
           "bin:x:2:2:bin:/bin:/usr/sbin/nologin", "sys:x:3:3:sys:/dev:/usr/sbin/nologin"]


def _accounts(rng: random.Random) -> tuple[str, list[list[str]], list[tuple[str, int, list[str]]]]:
    """A passwd file's text, its user rows (fields), and groups (name, gid, members) over those users."""
    names = rng.sample(NAMES, rng.randint(5, 10))
    uids = rng.sample(range(1000, 1100), len(names))
    users = [[n, "x", str(u), str(u), n.capitalize(), rng.choice([f"/home/{n}", f"/srv/{n}", f"/var/lib/{n}"]),
              rng.choice(_SHELLS)] for n, u in zip(names, uids)]
    groups = [(g, 2000 + i, sorted(rng.sample(names, rng.randint(1, min(5, len(names))))))
              for i, g in enumerate(rng.sample(["dev", "ops", "audio", "video", "docker", "backup", "staff"], 4))]
    return lines(_SYSTEM + [":".join(u) for u in users]), users, groups


def _group_text(groups: list[tuple[str, int, list[str]]]) -> str:
    return lines(["root:x:0:", "daemon:x:1:"] + [f"{g}:x:{gid}:{','.join(m)}" for g, gid, m in groups])


def _passwd_path(rng: random.Random) -> str:
    return f"{HOME}/{rng.choice(['sysdb', 'accounts', 'userdb'])}-{rng.choice(WORDS)}/passwd"


def passwd_shell_count(rng: random.Random) -> Candidate:
    path = _passwd_path(rng)
    text, users, _ = _accounts(rng)
    shell = rng.choice([u[6] for u in users])
    count = sum(line.split(":")[6] == shell for line in text.splitlines())
    return Candidate("passwd_shell_count",
                     f"{path} is a user database in the /etc/passwd format. How many accounts in it have {shell} "
                     "as their login shell? Answer with the number only.",
                     write_file(path, text), f"awk -F: '$7 == \"{shell}\"' {path} | wc -l", answer=str(count))


def passwd_home(rng: random.Random) -> Candidate:
    path = _passwd_path(rng)
    text, users, _ = _accounts(rng)
    user = rng.choice(users)
    return Candidate("passwd_home",
                     f"{path} is a user database in the /etc/passwd format. What is the home directory of the user "
                     f"{user[0]}? Answer with the path only.",
                     write_file(path, text), f"awk -F: '$1 == \"{user[0]}\" {{print $6}}' {path}", answer=user[5])


def passwd_max_uid(rng: random.Random) -> Candidate:
    path = _passwd_path(rng)
    text, users, _ = _accounts(rng)
    lowest = rng.random() < 0.4
    user = (min if lowest else max)(users, key=lambda u: int(u[2]))
    which = "the lowest UID among accounts with a UID of 1000 or more" if lowest else "the highest UID"
    return Candidate("passwd_max_uid",
                     f"{path} is a user database in the /etc/passwd format. Which user has {which}? Answer with "
                     "the user name only.",
                     write_file(path, text),
                     f"awk -F: '$3 >= 1000' {path} | sort -t: -k3 -n | {'head' if lowest else 'tail'} -n 1 | "
                     "cut -d: -f1", answer=user[0])


def group_member_count(rng: random.Random) -> Candidate:
    path = _passwd_path(rng).replace("/passwd", "/group")
    _, _, groups = _accounts(rng)
    name, _, members = rng.choice(groups)
    return Candidate("group_member_count",
                     f"{path} is a group database in the /etc/group format (members are the comma-separated last "
                     f"field). How many users are members of the group {name}? Answer with the number only.",
                     write_file(path, _group_text(groups)),
                     f"awk -F: '$1 == \"{name}\" {{print $4}}' {path} | tr ',' '\\n' | grep -c .",
                     answer=str(len(members)))


def user_groups(rng: random.Random) -> Candidate:
    path = _passwd_path(rng).replace("/passwd", "/group")
    _, _, groups = _accounts(rng)
    user = rng.choice([m for _, _, ms in groups for m in ms])
    mine = sorted(g for g, _, ms in groups if user in ms)
    return Candidate("user_groups",
                     f"{path} is a group database in the /etc/group format (members are the comma-separated last "
                     f"field). Which groups list {user} as a member? Answer with the group names in alphabetical "
                     "order, separated by commas, without spaces (for example: audio,dev).",
                     write_file(path, _group_text(groups)),
                     f"awk -F: '{{n = split($4, m, \",\"); for (i = 1; i <= n; i++) if (m[i] == \"{user}\") "
                     f"print $1}}' {path} | sort | paste -sd,", answer=",".join(mine))


def add_account(rng: random.Random) -> Candidate:
    path = _passwd_path(rng)
    text, users, _ = _accounts(rng)
    name = rng.choice([n for n in NAMES if n not in {u[0] for u in users}])
    uid = rng.randint(1100, 1199)
    shell = rng.choice(["/bin/bash", "/bin/sh"])
    entry = f"{name}:x:{uid}:{uid}::/home/{name}:{shell}"
    check = (starts_with(path, text) + f"[ \"$(grep -c '^{name}:' {path})\" = 1 ] || exit 1\n"
             f"awk -F: '$1 == \"{name}\" && NF == 7 && $3 == \"{uid}\" && $4 == \"{uid}\" && $6 == \"/home/{name}\" "
             f"&& $7 == \"{shell}\" {{ok = 1}} END {{exit !ok}}' {path}\n")
    return Candidate("add_account",
                     f"{path} is a user database in the /etc/passwd format. Add an account for the user {name} at "
                     f"the end of it: UID {uid}, primary group ID {uid}, an empty comment field, home directory "
                     f"/home/{name} and login shell {shell}. Keep the existing lines as they are.",
                     write_file(path, text), f"echo '{entry}' >> {path}", check=check)


# --------------------------------------------------------------------------------------------------------------
# Processes

_ALIVE = 'alive() { s=$(ps -o stat= -p "$1" 2>/dev/null) && [ -n "$s" ] && [ "${s#Z}" = "$s" ]; }\n'


def _proc_names(rng: random.Random, k: int) -> list[str]:
    return [f"{w}{rng.choice(['d', '-svc', '-worker', 'ctl'])}" for w in rng.sample(WORDS, k)]


def _spawn(name: str, count: int = 1, pid_file: str | None = None) -> str:
    """Bash that starts ``count`` detached processes named ``name`` (copies of sleep), the last one's PID saved."""
    script = f"mkdir -p {HOME}/bin {HOME}/run && cp /usr/bin/sleep {HOME}/bin/{name}\n"
    for _ in range(count):
        save = f" echo $! > {pid_file};" if pid_file else ""
        script += f"( {HOME}/bin/{name} 3600 </dev/null >/dev/null 2>&1 &{save} )\n"
    return script


def process_count(rng: random.Random) -> Candidate:
    target, other = _proc_names(rng, 2)
    n, m = rng.randint(1, 4), rng.randint(1, 3)
    return Candidate("process_count",
                     f"How many processes named {target} are running on this system? Answer with the number only.",
                     _spawn(target, n) + _spawn(other, m), f"pgrep -x {target} | wc -l", answer=str(n))


def kill_pid_file(rng: random.Random) -> Candidate:
    target, other = _proc_names(rng, 2)
    pid_file = f"{HOME}/run/{target}.pid"
    check = (_ALIVE + f"alive \"$(cat {HOME}/run/.{target}.pid)\" && exit 1\n"
             f"alive \"$(cat {HOME}/run/.{other}.pid)\"\n")
    init = (_spawn(target, 1, pid_file) + f"cp {pid_file} {HOME}/run/.{target}.pid\n"
            + _spawn(other, 1, f"{HOME}/run/.{other}.pid"))
    return Candidate("kill_pid_file",
                     f"The process whose PID is stored in {pid_file} must be stopped. Stop it, and leave every "
                     "other process running.",
                     init, f"kill $(cat {pid_file})", check=check)


def kill_by_name(rng: random.Random) -> Candidate:
    target, other = _proc_names(rng, 2)
    n, m = rng.randint(1, 3), rng.randint(1, 3)
    check = (_ALIVE + f"for p in $(pgrep -x {target}); do alive $p && exit 1; done\n"
             f"n=0; for p in $(pgrep -x {other}); do alive $p && n=$((n + 1)); done\n[ $n = {m} ]\n")
    return Candidate("kill_by_name",
                     f"Stop every process named {target}. The processes named {other} must keep running.",
                     _spawn(target, n) + _spawn(other, m), f"pkill -x {target}", check=check)


def write_pid(rng: random.Random) -> Candidate:
    target, *others = _proc_names(rng, 3)
    out = f"{HOME}/{rng.choice(['answer', 'pid', 'result'])}.txt"
    init = _spawn(target) + "".join(_spawn(o) for o in others)
    return Candidate("write_pid",
                     f"A process named {target} is running. Write its PID (just the number) into the file {out}.",
                     init, f"pgrep -x {target} > {out}",
                     check=f"[ \"$(tr -d ' \\n' < {out})\" = \"$(pgrep -x {target})\" ]\n")


# --------------------------------------------------------------------------------------------------------------
# Scheduling (crontab-format files)

_DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
_CRON_HEAD = "# m h dom mon dow command\n"


def _cron_path(rng: random.Random) -> str:
    return f"{HOME}/cron/{rng.choice(NAMES)}.crontab"


def _jobs(rng: random.Random, k: int) -> list[str]:
    return [f"/opt/jobs/{w}.sh" for w in rng.sample(WORDS, k)]


def cron_at_time(rng: random.Random) -> Candidate:
    path = _cron_path(rng)
    jobs = _jobs(rng, rng.randint(4, 8))
    times = rng.sample([(h, m) for h in range(24) for m in (0, 5, 15, 30, 45)], len(jobs))
    weekly = rng.sample(range(len(jobs)), len(jobs) // 3)
    rows = [f"{m} {h} * * {rng.randint(0, 6) if i in weekly else '*'} {j}" for i, (j, (h, m)) in
            enumerate(zip(jobs, times))]
    target = rng.choice([i for i in range(len(jobs)) if i not in weekly])
    h, m = times[target]
    return Candidate("cron_at_time",
                     f"{path} is a crontab file (fields: minute, hour, day of month, month, day of week, command). "
                     f"Which script runs every day at {h:02d}:{m:02d}? Answer with the script's file name only "
                     "(for example backup.sh).",
                     write_file(path, _CRON_HEAD + lines(rows)),
                     f"awk '$1 == {m} && $2 == {h} && $5 == \"*\" {{print $6}}' {path} | xargs -n 1 basename",
                     answer=jobs[target].rsplit("/", 1)[1])


_PER_DAY = ("function n(f, size,   a) { if (f == \"*\") return size; if (f ~ /^\\*\\//) return size / substr(f, 3); "
            "return split(f, a, \",\") }")


def cron_runs_per_day(rng: random.Random) -> Candidate:
    path = _cron_path(rng)
    jobs = _jobs(rng, rng.randint(3, 6))
    rows, counts = [], []
    for j in jobs:
        form = rng.randrange(5)
        if form == 0:
            step = rng.choice([5, 10, 15, 20, 30])
            rows.append(f"*/{step} * * * * {j}"), counts.append(1440 // step)
        elif form == 1:
            step = rng.choice([2, 3, 4, 6, 8, 12])
            rows.append(f"{rng.randint(0, 59)} */{step} * * * {j}"), counts.append(24 // step)
        elif form == 2:
            hours = sorted(rng.sample(range(24), rng.randint(2, 4)))
            rows.append(f"{rng.randint(0, 59)} {','.join(map(str, hours))} * * * {j}"), counts.append(len(hours))
        elif form == 3:
            step = rng.choice([10, 15, 20, 30])
            rows.append(f"*/{step} {rng.randint(0, 23)} * * * {j}"), counts.append(60 // step)
        else:
            rows.append(f"{rng.randint(0, 59)} {rng.randint(0, 23)} * * * {j}"), counts.append(1)
    target = rng.randrange(len(jobs))
    return Candidate("cron_runs_per_day",
                     f"{path} is a crontab file (fields: minute, hour, day of month, month, day of week, command). "
                     f"How many times a day does {jobs[target]} run? Answer with the number only.",
                     write_file(path, _CRON_HEAD + lines(rows)),
                     f"awk '{_PER_DAY} $6 == \"{jobs[target]}\" {{print n($1, 60) * n($2, 24)}}' {path}",
                     answer=str(counts[target]))


def cron_weekday_count(rng: random.Random) -> Candidate:
    path = _cron_path(rng)
    jobs = _jobs(rng, rng.randint(4, 9))
    fields = [rng.choice(["*", str(rng.randint(0, 6)), "1-5", "0,6", f"{rng.randint(0, 2)}-{rng.randint(3, 6)}"])
              for _ in jobs]
    day = rng.randrange(7)

    def runs(f: str) -> bool:
        if f == "*":
            return True
        for part in f.split(","):
            lo, _, hi = part.partition("-")
            if int(lo) <= day <= int(hi or lo):
                return True
        return False

    rows = [f"{rng.randint(0, 59)} {rng.randint(0, 23)} * * {f} {j}" for f, j in zip(fields, jobs)]
    solution = (f"awk -v d={day} '!/^#/ && NF >= 6 {{ ok = ($5 == \"*\"); n = split($5, a, \",\"); "
                "for (i = 1; i <= n; i++) { k = split(a[i], r, \"-\"); if (k == 1) r[2] = r[1]; "
                "if (a[i] != \"*\" && d >= r[1] + 0 && d <= r[2] + 0) ok = 1 } c += ok } END { print c + 0 }' "
                f"{path}")
    return Candidate("cron_weekday_count",
                     f"{path} is a crontab file (fields: minute, hour, day of month, month, day of week, command; "
                     f"days of the week are numbered 0 = Sunday to 6 = Saturday). How many of its jobs run on "
                     f"{_DAYS[day]}s? A job whose day-of-week field is * runs every day. Answer with the number only.",
                     write_file(path, _CRON_HEAD + lines(rows)), solution,
                     answer=str(sum(runs(f) for f in fields)))


def add_cron_job(rng: random.Random) -> Candidate:
    path = _cron_path(rng)
    jobs = _jobs(rng, rng.randint(3, 6))
    new, jobs = jobs[0], jobs[1:]
    text = _CRON_HEAD + lines([f"{rng.randint(0, 59)} {rng.randint(0, 23)} * * * {j}" for j in jobs])
    h, m = rng.randint(0, 23), rng.choice([0, 10, 15, 20, 30, 40, 45, 50])
    check = (starts_with(path, text) + f"awk '$1 + 0 == {m} && $1 ~ /^[0-9]+$/ && $2 + 0 == {h} && "
             f"$2 ~ /^[0-9]+$/ && $3 == \"*\" && "
             f"$4 == \"*\" && $5 == \"*\" && $6 == \"{new}\" && NF == 6 {{ok = 1}} END {{exit !ok}}' {path}\n")
    return Candidate("add_cron_job",
                     f"{path} is a crontab file (fields: minute, hour, day of month, month, day of week, command). "
                     f"Add a line to the end of it so that {new} runs every day at {h:02d}:{m:02d}. Keep the "
                     "existing lines as they are.",
                     write_file(path, text), f"echo '{m} {h} * * * {new}' >> {path}", check=check)


# --------------------------------------------------------------------------------------------------------------
# Environment variables


def env_value(rng: random.Random) -> Candidate:
    path = f"{HOME}/{rng.choice(['app', 'service', 'deploy'])}-{rng.choice(NAMES)}/env.sh"
    name, later = rng.sample(WORDS, 2)
    version = f"{rng.randint(1, 5)}.{rng.randint(0, 9)}.{rng.randint(0, 20)}"
    root = rng.choice(["/opt", "/srv", "/usr/local"])
    override = rng.random() < 0.5
    log_root = rng.choice([None, "/var/log", "/data/logs"])
    rows = [f"APP_NAME={name}", f"APP_VERSION={version}", f"export APP_HOME={root}/$APP_NAME-$APP_VERSION"]
    if override:
        rows.append(f"APP_NAME={later}")
    if log_root:
        rows.append(f"LOG_ROOT={log_root}")
    rows += ["export DATA_DIR=$APP_HOME/data", "export LOG_DIR=${LOG_ROOT:-/tmp/logs}/$APP_NAME"]
    app_home = f"{root}/{name}-{version}"
    values = {"APP_HOME": app_home, "DATA_DIR": f"{app_home}/data",
              "LOG_DIR": f"{log_root or '/tmp/logs'}/{later if override else name}"}
    var = rng.choice(sorted(values))
    return Candidate("env_value",
                     f"What is the value of the environment variable {var} in a bash shell after it sources "
                     f"{path}? Answer with the value only.",
                     write_file(path, lines(rows)), f"bash -c '. {path}; echo \"${var}\"'", answer=values[var])


def export_variable(rng: random.Random) -> Candidate:
    path = f"{HOME}/{rng.choice(['app', 'service', 'deploy'])}/profile.sh"
    var = rng.choice(["APP_MODE", "REGION", "LOG_LEVEL", "CACHE_DIR", "OWNER"])
    value = {"APP_MODE": rng.choice(["production", "staging", "debug"]), "REGION": rng.choice(["eu-west", "us-east"]),
             "LOG_LEVEL": rng.choice(["info", "warning", "debug"]), "CACHE_DIR": f"/var/cache/{rng.choice(WORDS)}",
             "OWNER": rng.choice(NAMES)}[var]
    text = lines([f"export PROJECT={rng.choice(WORDS)}", f"TEAM={rng.choice(NAMES)}"])
    check = (starts_with(path, text) + f"[ \"$(bash -c '. {path} >/dev/null 2>&1; printenv {var}')\" = \"{value}\" ]\n")
    return Candidate("export_variable",
                     f"Add a line to the end of {path} so that any bash shell that sources it has the environment "
                     f"variable {var} set to {value} and exported to the programs it starts. Keep the existing "
                     "lines.",
                     write_file(path, text), f"echo 'export {var}={value}' >> {path}", check=check)


SYSTEM_TEMPLATES: tuple[Template, ...] = (
    count_executable, world_writable, octal_mode, make_private, make_scripts_executable,
    passwd_shell_count, passwd_home, passwd_max_uid, group_member_count, user_groups, add_account,
    process_count, kill_pid_file, kill_by_name, write_pid,
    cron_at_time, cron_runs_per_day, cron_weekday_count, add_cron_job,
    env_value, export_variable,
)
