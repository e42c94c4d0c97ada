"""SIGKILL of `mlxfs import` and `mlxfs gc` at many points: the store always verifies, and
what was committed reads back exactly (DESIGN.md §6; issue 2's crash-safe gc)."""

import os
import random
import signal
import subprocess
import time



def kill_after(m, args, delay):
    """Starts `mlxfs ARGS`, SIGKILLs it after `delay` seconds (if still running)."""
    cmd = [str(m.binary), "--store", str(m.store), *[str(a) for a in args]]
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=m.env)
    time.sleep(delay)
    if p.poll() is None:
        os.kill(p.pid, signal.SIGKILL)
    p.wait()
    return p.returncode


def hf_files(corpus):
    for dirpath, _, names in os.walk(corpus.hf):
        for name in names:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                yield path, "huggingface/hub/" + os.path.relpath(path, corpus.hf)


def test_kill9_during_import_then_gc(make_store, corpus):
    rng = random.Random(int(os.environ.get("KILL_SEED", "7")))
    killed = 0
    for i in range(6):
        # A fresh store each time: only a first import has enough work to be killed mid-way.
        m = make_store(f"store{i}")
        if kill_after(m, ["import", corpus.hf, corpus.ollama], rng.uniform(0.02, 0.35)) == -9:
            killed += 1
        if m.store.exists():
            v = m.run("verify", expect=None)
            assert v.returncode == 0, f"store does not verify after a killed import:\n{v.stdout}"
    assert killed > 0, "no import was killed: the delays are too long for this machine"

    # Importing again into the last killed store completes, and everything reads back exactly.
    m.run("import", corpus.hf, corpus.ollama)
    for src, ns in hf_files(corpus):
        got = m.run("cat", ns).stdout
        assert got == open(src, "rb").read(), ns

    # Remove a model, then kill gc at several points: each time the store verifies and the
    # rest still reads back.
    m.run("rm", "-r", "huggingface/hub/models--mlxtest--llama-mini-finetune")
    for _ in range(5):
        kill_after(m, ["gc"], rng.uniform(0.0, 0.3))
        v = m.run("verify", expect=None)
        assert v.returncode == 0, f"store does not verify after a killed gc:\n{v.stdout}"
    m.run("gc")
    assert m.run("verify").returncode == 0
    for src, ns in hf_files(corpus):
        if "llama-mini-finetune" in ns:
            continue
        assert m.run("cat", ns).stdout == open(src, "rb").read(), ns
