"""The libFuzzer targets (tests/fuzz/fuzz_*.c), built by `make fuzz-build`
with clang + ASan/UBSan/LSan into build/fuzz/:

    fuzz_sse   core/sse.c: the reader under any slicing against a reference
               parser, the cap, stop, reset, and sse_format_event read back
    fuzz_json  core/luajson.c + core/jschema.c: jansson → Lua → jansson round
               trips (with and without a schema), json.decode/encode, and the
               validator's messages on fixed and fuzzed schemas

Each target replays its seed corpus (tests/fuzz/corpus/<name>/, the
regression inputs: add a crash input there once its bug is fixed), then
fuzzes for RAPPORT_FUZZ_SECONDS (default 10) from those seeds in a scratch
corpus. A crash, leak, sanitizer report or broken invariant fails the test
with the report and the input that caused it. RAPPORT_FUZZ_SEED fixes the
fuzzing seed (the one used is printed on failure). Longer runs: `make fuzz
FUZZ_SECONDS=600`.
"""

import base64
import os
import re
import subprocess
from pathlib import Path

import pytest

from helpers.server import SANITIZER_PATTERNS

REPO = Path(__file__).resolve().parents[1]
FUZZ_DIR = REPO / "tests" / "fuzz"
BUILD = REPO / "build" / "fuzz"
TARGETS = ("sse", "json")
FUZZ_SECONDS = int(os.environ.get("RAPPORT_FUZZ_SECONDS") or 10)
FUZZ_RUNS = 1000000             # an upper bound; the time limit usually ends it
MAX_SEED_BYTES = 4096           # libFuzzer's default -max_len

REPORT_PATTERNS = SANITIZER_PATTERNS + [
    re.compile(r"INVARIANT FAILED"),
    re.compile(r"==\d+== ERROR: libFuzzer"),
    re.compile(r"ERROR: UndefinedBehaviorSanitizer"),
    re.compile(r"SUMMARY: \w*Sanitizer"),
    re.compile(r"Lua panic"),
]
ARTIFACT = re.compile(r"Test unit written to (\S+)")


def fuzz_env():
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0:symbolize=1"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    return env


@pytest.fixture(scope="module")
def fuzzers():
    """Builds both fuzzers once; fails every test here if that fails."""
    try:
        proc = subprocess.run(["make", "--no-print-directory", "-j2", "fuzz-build"],
                              cwd=str(REPO), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=300)
    except FileNotFoundError:
        pytest.fail("make not found", pytrace=False)
    out = proc.stdout.decode("utf-8", "replace")
    if proc.returncode != 0:
        hint = ""
        if re.search(r"clang: (command )?not found|No such file or directory.*clang", out):
            hint = "\nclang is missing: install the Debian package clang (tools/deps.sh does)"
        pytest.fail("make fuzz-build failed (exit %d):\n%s%s"
                    % (proc.returncode, out[-8000:], hint), pytrace=False)
    bins = {t: BUILD / ("fuzz_" + t) for t in TARGETS}
    for t, b in bins.items():
        if not (b.is_file() and os.access(b, os.X_OK)):
            pytest.fail("make fuzz-build did not produce %s" % b.relative_to(REPO),
                        pytrace=False)
    return bins


def describe_input(path):
    data = Path(path).read_bytes()
    shown = data[:2000]
    return ("%s (%d bytes)\n  repr:   %r%s\n  base64: %s"
            % (path, len(data), shown, "..." if len(data) > len(shown) else "",
               base64.b64encode(data[:4096]).decode()))


def run_fuzzer(binary, args, tmp_path, timeout):
    """Runs a fuzzer; fails the test with its report and the crash input."""
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir(exist_ok=True)
    cmd = [str(binary), "-artifact_prefix=%s/" % artifacts, "-timeout=10",
           "-rss_limit_mb=2048", "-print_final_stats=1"] + args
    try:
        proc = subprocess.run(cmd, cwd=str(tmp_path), env=fuzz_env(),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.output or b"").decode("utf-8", "replace")
        pytest.fail("%s did not finish within %d s:\n%s"
                    % (binary.name, timeout, out[-6000:]), pytrace=False)
    out = proc.stdout.decode("utf-8", "replace")
    report = [p.pattern for p in REPORT_PATTERNS if p.search(out)]
    if proc.returncode == 0 and not report:
        return out

    inputs = [m.group(1) for m in ARTIFACT.finditer(out)]
    inputs += [str(p) for p in sorted(artifacts.iterdir()) if str(p) not in inputs]
    seed = re.search(r"INFO: Seed: (\d+)", out)
    # The report itself: from the first line that looks like one.
    start = min((m.start() for p in REPORT_PATTERNS for m in [p.search(out)] if m),
                default=max(0, len(out) - 6000))
    start = out.rfind("\n", 0, start) + 1
    pytest.fail(
        "%s: exit status %d%s\ncommand: %s%s\n--- report ---\n%s\n--- input(s) ---\n%s"
        % (binary.name, proc.returncode,
           " (%s)" % ", ".join(report) if report else "",
           " ".join(cmd),
           "\nseed: %s (RAPPORT_FUZZ_SEED=%s reproduces the run)" % (seed.group(1), seed.group(1))
           if seed else "",
           out[start:start + 10000],
           "\n".join(describe_input(p) for p in inputs if Path(p).is_file())
           or "(none written: the failure is in the fuzzer start-up or in the listed seed)"),
        pytrace=False)


def seeds(target):
    return sorted(p for p in (FUZZ_DIR / "corpus" / target).iterdir() if p.is_file())


def replay_seeds(fuzzers, target, tmp_path):
    files = seeds(target)
    out = run_fuzzer(fuzzers[target], [str(p) for p in files], tmp_path, timeout=120)
    ran = len(re.findall(r"^Executed .* in \d+ ms", out, re.M))
    assert ran == len(files), "%d of %d seeds ran:\n%s" % (ran, len(files), out[-3000:])


def short_fuzz_run(fuzzers, target, tmp_path):
    work = tmp_path / "corpus"
    work.mkdir()
    args = ["-max_total_time=%d" % FUZZ_SECONDS, "-runs=%d" % FUZZ_RUNS,
            "-dict=%s" % (FUZZ_DIR / (target + ".dict"))]
    if os.environ.get("RAPPORT_FUZZ_SEED"):
        args.append("-seed=%s" % os.environ["RAPPORT_FUZZ_SEED"])
    out = run_fuzzer(fuzzers[target], args + [str(work), str(FUZZ_DIR / "corpus" / target)],
                     tmp_path, timeout=FUZZ_SECONDS + 60)
    runs = re.search(r"stat::number_of_executed_units: (\d+)", out)
    assert runs and int(runs.group(1)) > len(seeds(target)), \
        "the fuzzer hardly ran:\n%s" % out[-3000:]


@pytest.mark.parametrize("target", TARGETS)
def test_seed_corpus_is_present_and_within_the_default_max_len(target):
    files = seeds(target)
    assert len(files) >= 5, "tests/fuzz/corpus/%s has only %d seeds" % (target, len(files))
    big = [p.name for p in files if p.stat().st_size > MAX_SEED_BYTES]
    assert not big, "seeds over %d bytes (libFuzzer's -max_len): %s" % (MAX_SEED_BYTES, big)
    assert (FUZZ_DIR / (target + ".dict")).is_file()


@pytest.mark.timeout(120)
def test_sse_reader_and_writer_replay_the_seed_corpus_without_a_finding(fuzzers, tmp_path):
    replay_seeds(fuzzers, "sse", tmp_path)


@pytest.mark.timeout(FUZZ_SECONDS + 120)
def test_sse_reader_slicing_cap_stop_and_writer_round_trip_survive_a_short_fuzz_run(
        fuzzers, tmp_path):
    short_fuzz_run(fuzzers, "sse", tmp_path)


@pytest.mark.timeout(120)
def test_json_lua_round_trip_and_validator_replay_the_seed_corpus_without_a_finding(
        fuzzers, tmp_path):
    replay_seeds(fuzzers, "json", tmp_path)


@pytest.mark.timeout(FUZZ_SECONDS + 120)
def test_json_lua_round_trip_and_validator_messages_survive_a_short_fuzz_run(
        fuzzers, tmp_path):
    short_fuzz_run(fuzzers, "json", tmp_path)
