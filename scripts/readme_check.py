"""Runs the README's runnable examples as written and compares their outputs.

    python3 scripts/readme_check.py path/to/otstream [README.md]

A code block is runnable when the line before its ```sh fence is a marker:

    <!-- check: run -->                 run each command; compare the outputs shown
    <!-- check: start -->               start the block's one command in the
                                        background (otstream serve); it runs until
                                        the end, and must then stop cleanly on SIGTERM
    <!-- check: run fixture=PATH -->    first post the recording PATH (otstream
                                        replay) to the running serve
    <!-- check: run stop -->            first stop what `start` started

Commands run serially, in README order, each with `bash -c` in one scratch
directory laid out as a checkout after `cargo build --release`
(`testdata/` is the repository's, `target/release/otstream` is the binary
given: CI's debug build, never a release build), with `otstream` on PATH
and a `cargo` there that runs `cargo run --release -- ARGS` as `otstream
ARGS` (test.sh checks separately that `cargo run` picks the otstream
binary). A variable assignment (`H=...`) holds for the commands after it.
curl runs with `--fail-with-body` (through its .curlrc), so an example that
gets an error status fails the check.

An expected output is the `# ...` lines right after a command (a blank line
ends them; a comment after a blank line describes the next command). A line
indented past `# ` continues the one before it when that one ends with a
comma (a long JSON line wrapped); otherwise its indentation is output.
The output must match in full: `...` stands for any text (the whitespace
around it included), everything else is literal. A command that shows no
output must exit 0.

Exits non-zero naming the first example that does not run as written.
"""
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^<!-- check: (run|start)((?: [a-z]+(?:=\S+)?)*) -->$")
# serve's defaults, which the README's commands use as written.
READY_URL = "http://127.0.0.1:9145/readyz"
COMMAND_TIMEOUT_S = 120


class Failure(Exception):
    pass


def blocks(readme):
    """(line number, mode, options, lines) of each marked block."""
    lines = readme.read_text().splitlines()
    out = []
    i = 0
    while i < len(lines):
        m = MARKER.match(lines[i].strip())
        if not m:
            i += 1
            continue
        if i + 1 >= len(lines) or lines[i + 1].strip() != "```sh":
            raise Failure(f"README.md:{i + 1}: a check marker must be followed by a ```sh block")
        options = dict(
            (o.split("=", 1) + [""])[:2] for o in m.group(2).split()
        )
        body = []
        j = i + 2
        while j < len(lines) and lines[j].strip() != "```":
            body.append((j + 1, lines[j]))
            j += 1
        out.append((i + 1, m.group(1), options, body))
        i = j + 1
    return out


def commands(body):
    """(line number, command text, expected output or None) of a block."""
    out = []
    k = 0
    while k < len(body):
        line_no, line = body[k]
        if not line.strip() or line.lstrip().startswith("#"):
            k += 1
            continue
        text = [line]
        while text[-1].rstrip().endswith("\\") and k + 1 < len(body):
            k += 1
            text.append(body[k][1])
        k += 1
        expected = []
        while k < len(body) and body[k][1].startswith("#"):
            shown = body[k][1][1:]
            shown = shown[1:] if shown.startswith(" ") else shown
            if shown.startswith(" ") and expected and expected[-1].endswith(","):
                expected[-1] += shown.strip()
            else:
                expected.append(shown)
            k += 1
        out.append((line_no, "\n".join(text), "\n".join(expected) if expected else None))
    return out


def matches(expected, actual):
    parts = [re.escape(p) for p in re.split(r"\s*\.\.\.\s*", expected)]
    return re.fullmatch(".*?".join(parts), actual, re.DOTALL) is not None


def scratch(binary):
    """A directory laid out like a checkout after a release build."""
    d = pathlib.Path(tempfile.mkdtemp(prefix="otstream-readme-"))
    (d / "testdata").symlink_to(ROOT / "testdata")
    (d / "target/release").mkdir(parents=True)
    (d / "target/release/otstream").symlink_to(binary)
    bin_dir = d / ".bin"
    bin_dir.mkdir()
    (bin_dir / "otstream").symlink_to(binary)
    cargo = bin_dir / "cargo"
    cargo.write_text(
        "#!/usr/bin/env bash\n"
        "# The README's `cargo run --release -- ARGS`, as the binary under test.\n"
        'if [ "$1 $2 $3" = "run --release --" ]; then shift 3; exec otstream "$@"; fi\n'
        "echo \"readme check: only 'cargo run --release -- ARGS' is provided, not: cargo $*\" >&2\n"
        "exit 2\n"
    )
    cargo.chmod(0o755)
    (d / ".curlrc").write_text("fail-with-body\nsilent\nshow-error\n")
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    env["CURL_HOME"] = str(d)
    # Logs to stderr in plain text whatever the caller's environment says.
    for k in list(env):
        if k.startswith("OTSTREAM_"):
            del env[k]
    return d, env


def ready(proc):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(READY_URL, timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def stop(background):
    for line_no, proc, log in background:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise Failure(f"README.md:{line_no}: did not stop within 40 s of SIGTERM")
        if code != 0:
            raise Failure(
                f"README.md:{line_no}: exited {code} on SIGTERM; its log:\n{log.read_text()[-4000:]}"
            )
    background.clear()


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    binary = pathlib.Path(sys.argv[1]).resolve()
    readme = pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "README.md"
    if not binary.is_file():
        raise Failure(f"{binary} does not exist (build it first)")
    workdir, env = scratch(binary)
    background = []
    variables = []
    ran = 0
    try:
        for marker_line, mode, options, body in blocks(readme):
            if "stop" in options:
                stop(background)
            if "fixture" in options:
                fixture = ROOT / options["fixture"]
                post = subprocess.run(
                    ["otstream", "replay", "--quiet", "--http", "http://127.0.0.1:5144/pub", str(fixture)],
                    cwd=workdir, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                )
                if post.returncode != 0:
                    raise Failure(f"README.md:{marker_line}: posting {fixture} failed:\n{post.stderr}")
            for line_no, text, expected in commands(body):
                ran += 1
                if mode == "start":
                    log = workdir / f"background-{line_no}.log"
                    proc = subprocess.Popen(
                        ["bash", "-c", text], cwd=workdir, env=env,
                        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                    )
                    background.append((line_no, proc, log))
                    if not ready(proc):
                        raise Failure(
                            f"README.md:{line_no}: `{text}` did not become ready at {READY_URL}"
                            f" (is something else on its ports?); its log:\n{log.read_text()[-4000:]}"
                        )
                    continue
                if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S+", text.strip()):
                    variables.append(text.strip())
                    continue
                script = "\n".join(variables + [text])
                try:
                    r = subprocess.run(
                        ["bash", "-c", script], cwd=workdir, env=env,
                        capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                    )
                except subprocess.TimeoutExpired:
                    raise Failure(f"README.md:{line_no}: `{text}` did not finish in {COMMAND_TIMEOUT_S} s")
                actual = r.stdout.replace("\r\n", "\n").rstrip()
                if r.returncode != 0:
                    raise Failure(
                        f"README.md:{line_no}: `{text}` exited {r.returncode}\n"
                        f"stdout:\n{actual[-4000:]}\nstderr:\n{r.stderr[-4000:]}"
                    )
                if expected is not None and not matches(expected, actual):
                    raise Failure(
                        f"README.md:{line_no}: `{text}` printed something other than the README shows\n"
                        f"README:\n{expected}\nprogram:\n{actual[-4000:]}"
                    )
        stop(background)
    finally:
        for _, proc, _ in background:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(workdir, ignore_errors=True)
    if ran == 0:
        raise Failure("no runnable examples found: is the marker spelt <!-- check: run -->?")
    print(f"readme check: {ran} commands ran as written")


if __name__ == "__main__":
    try:
        main()
    except Failure as e:
        print(f"readme check: {e}", file=sys.stderr)
        sys.exit(1)
