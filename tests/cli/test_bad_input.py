"""Malformed input to every loader and every command: exit status 2, exactly one line on stderr that names
the file / line / field / allowed values, no traceback, and the workspace's stored data unchanged.

CLI cases run in-process through ``fastif_core.cli.main`` (fast); a few run as real subprocesses.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fastif_core.cli import main
from fastif_core.data.loaders import load_source
from fastif_core.errors import FastifError
from fastif_core.store import DB_FILENAME

TINY = ["--demo-size", "60", "--holdout", "0", "--epochs", "1", "--max-length", "48", "--device", "cpu"]
EXAMPLE = "demo-hans:challenge:ex0"
FAST = ["--k", "5", "--depth", "2", "--device", "cpu"]
DB_FILES = tuple(DB_FILENAME + end for end in ("", "-wal", "-shm", "-journal"))  # the store and SQLite's own


def _table_rows(db: Path) -> list[tuple[str, list[str]]]:
    """Every table of the database file, as the schema inspector lists it (so a table added by a later
    migration is covered without editing this list), with its rows sorted. Raises sqlalchemy's
    DatabaseError on a file that is not a database."""
    from sqlalchemy import create_engine, inspect

    engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(f"file:{db}?mode=ro", uri=True))
    try:
        with engine.connect() as conn:
            names = sorted(inspect(conn).get_table_names())
            return [
                (t, sorted(repr(tuple(r)) for r in conn.exec_driver_sql(f'SELECT * FROM "{t}"')))
                for t in names
            ]
    finally:
        engine.dispose()


def workspace_digest(ws: Path) -> str:
    """What a command may have written to the workspace: the path and the bytes of every file under it
    (manifest, checkpoints, index.faiss, features, exports, logs), and the rows of every table of the
    store. The database file and SQLite's -wal/-shm/-journal files are hashed by their tables' contents,
    not their bytes, since SQLite rewrites those on a read (a checkpoint, the shared-memory index)."""
    from sqlalchemy.exc import DatabaseError

    h = hashlib.sha256()
    for path in sorted(p for p in ws.rglob("*") if p.is_file() and p.name not in DB_FILES):
        h.update(f"{path.relative_to(ws).as_posix()}\0{path.stat().st_size}\0".encode())
        h.update(path.read_bytes())
    db = ws / DB_FILENAME
    if not db.exists():
        h.update(b"<no db>")
        return h.hexdigest()
    try:
        for table, rows in _table_rows(db):
            h.update(f"\0table {table}\0".encode() + repr(rows).encode())
    except (
        DatabaseError,
        sqlite3.DatabaseError,
    ):  # the garbage-database case: its bytes must not change either
        h.update(db.read_bytes())
    return h.hexdigest()


def run_cli(capsys, args: list[str]) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line(code: int, err: str, *needles: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("error:") and len(line) < 600, line
    for needle in needles:
        assert needle in line, line
    return line


def check_unchanged(capsys, ws: Path, args: list[str], *needles: str) -> str:
    before = workspace_digest(ws)
    code, _, err = run_cli(capsys, args)
    line = assert_one_line(code, err, *needles)
    assert workspace_digest(ws) == before, "the command changed the workspace"
    return line


def test_the_digest_covers_every_table_and_the_bytes_of_every_file(tiny_workspace: Path):
    """The basis of every "nothing changed" check: each table of the schema is hashed, a row written to a
    table the first hand-made list left out changes the digest, and so do rewritten bytes of the same size
    in index.faiss or a checkpoint; reading the workspace does not."""
    import numpy as np

    from fastif_core.apps.simulate.config import SimulateConfig
    from fastif_core.store import Store
    from fastif_core.store import matrices as sm
    from fastif_core.store.schema import Base
    from fastif_core.workspace.layout import LoadedWorkspace

    hashed = {t for t, _ in _table_rows(tiny_workspace / DB_FILENAME)}
    assert set(Base.metadata.tables) <= hashed, set(Base.metadata.tables) - hashed
    before = workspace_digest(tiny_workspace)
    with Store.open(tiny_workspace) as store:  # a reader: a WAL checkpoint, a new -shm, no row changes
        store.query_examples(limit=5)
    LoadedWorkspace.load(tiny_workspace, "cpu")
    assert workspace_digest(tiny_workspace) == before
    model_id = json.loads((tiny_workspace / "workspace.json").read_text())["model_id"]
    seen = {before}
    with Store.open(tiny_workspace) as store:
        store.save_app_result("graph", SimulateConfig(), {"edges": []}, model_id=model_id)
        seen.add(workspace_digest(tiny_workspace))
        info = sm.start_matrix(
            store,
            model_id=model_id,
            test_ids=[EXAMPLE],
            train_positions=[0],
            config={},
            full=False,
            row_block=1,
            col_block=1,
        )
        seen.add(workspace_digest(tiny_workspace))
        sm.save_chunk(store, info.id, 0, 0, np.ones((1, 1), dtype=np.float32))
        seen.add(workspace_digest(tiny_workspace))
    for path in (_build(tiny_workspace) / "index.faiss", _model(tiny_workspace) / "model.safetensors"):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one byte flipped, same size and name
        path.write_bytes(bytes(data))
        seen.add(workspace_digest(tiny_workspace))
    assert len(seen) == 6  # every write above changed it


# ---- data files -----------------------------------------------------------------------------------
H = "sentence1\tsentence2\tgold_label\n"
ROW = "A man plays.\tA person plays.\tentailment\n"
JL = '{"gold_label": "neutral", "sentence1": "A dog.", "sentence2": "An animal.", "pairID": "p1"}\n'
HANS_HEADER = "gold_label\tsentence1\tsentence2\tpairID\theuristic\tsubcase\n"
# fmt: off
FILES: dict[str, tuple[str, bytes, tuple[str, ...]]] = {
    # case: (file name, content, needles every message must contain besides the file name)
    "empty": ("empty.tsv", b"", (":1:", "empty file")),
    "blank-lines": ("blank.tsv", b"\n  \n\t\n", ("empty file",)),
    "header-only": ("header.tsv", H.encode(), (":2:", "no data rows")),
    "wrong-columns-tsv": ("cols.tsv", b"text_a\ttext_b\tlabel\nA\tB\tentailment\n", ("missing column 'sentence1'",
                                                                                    "text_a")),
    "wrong-columns-jsonl": ("cols.jsonl", b'{"premise": "A", "hypothesis": "B", "gold_label": "neutral"}\n',
                            (":1:", "missing column 'sentence1'", "premise")),
    "truncated-jsonl": ("cut.jsonl", (JL + JL[:40].replace("p1", "p2")).encode(), (":2:", "invalid JSON")),
    "truncated-tsv": ("cut.tsv", (H + ROW + "A woman sings.\tA pers").encode(), (":3:", "expected 3")),
    "extra-field": ("tab.tsv", (H + "A\tB\tC\tentailment\n").encode(), (":2:", "4 tab-separated", "no quoting")),
    "binary-garbage": ("garbage.tsv", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, (":1:", "not UTF-8")),
    "gzip": ("train.tsv.gz", b"\x1f\x8b\x08\x00" + bytes(range(200)), (":1:", "gzip", "decompress")),
    "nul-bytes": ("nul.tsv", b"\x00\x00\x00\x00\n", (":1:", "unrecognised format")),
    "unknown-label": ("label.tsv", (H + "A\tB\tmaybe\n").encode(), (":2:", "'maybe'", "allowed entailment, neutral")),
    "numeric-labels-tsv": ("num.tsv", (H + "A\tB\t0\nC\tD\t2\n").encode(), (":2:", "'0'", "contradiction")),
    "numeric-labels-jsonl": ("num.jsonl", b'{"gold_label": 1, "sentence1": "A", "sentence2": "B"}\n',
                             (":1:", "'1'", "allowed entailment")),
    "duplicate-ids": ("dup.jsonl", (JL + JL).encode(), (":2:", "duplicate id 'p1'", "first at")),
    "duplicate-ids-tsv": ("dup.tsv", ("index\t" + H + "7\tA\tB\tneutral\n7\tC\tD\tneutral\n").encode(),
                          (":3:", "duplicate id '7'")),
    "huge-line": ("huge.tsv", (H + "x" * 2_000_000 + "\n").encode(), (":2:", "1 tab-separated")),
    "huge-label": ("hugelabel.tsv", (H + "A\tB\t" + "y" * 100_000 + "\n").encode(), (":2:", "100000 characters")),
    "not-a-json-object": ("list.jsonl", b"[1, 2, 3]\n", (":1:", "expected a JSON object")),
    "hans-missing-column": ("heuristics_x_set.txt", (HANS_HEADER + "entailment\tA\tB\tex0\tlexical\tln\n").encode(),
                            ("missing column 'template'",)),
    "hans-3-way-label": ("heuristics_y_set.txt", (HANS_HEADER.replace("subcase", "subcase\ttemplate")
                                                   + "neutral\tA\tB\tex0\tlexical\tln\tt1\n").encode(),
                         (":2:", "'neutral'", "allowed entailment, non-entailment")),
}
# fmt: on
NO_CONSENSUS = (
    "dash.jsonl",
    (JL.replace('"neutral"', '"-"') * 1).encode()
    + JL.replace('"neutral"', '"-"').replace("p1", "p2").encode(),
)


def write_case(tmp_path: Path, case: str) -> Path:
    name, content, _ = FILES[case]
    path = tmp_path / "data" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("case", sorted(FILES))
def test_loader_names_file_and_line(tmp_path: Path, case: str):
    path = write_case(tmp_path, case)
    with pytest.raises(FastifError) as info:
        load_source(str(path))
    message = str(info.value)
    assert "\n" not in message and len(message) < 600 and str(path) in message
    for needle in FILES[case][2]:
        assert needle in message


@pytest.mark.parametrize("role", ["train", "eval"])
@pytest.mark.parametrize("case", sorted(FILES))
def test_prepare_with_a_bad_file_changes_nothing(
    tiny_workspace: Path, tmp_path: Path, capsys, case: str, role: str
):
    path = write_case(tmp_path, case)
    source = ["--train", path] if role == "train" else ["--train", "demo", "--eval", path]
    check_unchanged(
        capsys, tiny_workspace, ["prepare", "-w", tiny_workspace, *source, *TINY], str(path), *FILES[case][2]
    )


@pytest.mark.parametrize(
    "role,needle", [("train", "no training examples"), ("eval", "no evaluation examples")]
)
def test_a_source_whose_rows_all_lack_a_gold_label(
    tiny_workspace: Path, tmp_path: Path, capsys, role, needle
):
    path = tmp_path / NO_CONSENSUS[0]
    path.write_bytes(NO_CONSENSUS[1])
    source = ["--train", path] if role == "train" else ["--train", "demo", "--eval", path]
    check_unchanged(
        capsys,
        tiny_workspace,
        ["prepare", "-w", tiny_workspace, *source, *TINY],
        str(path),
        needle,
        "gold label '-'",
        "2 row(s)",
    )


@pytest.mark.parametrize("source", ["missing", "directory", "same-file-twice"])
def test_prepare_with_a_bad_source(tiny_workspace: Path, tmp_path: Path, capsys, source: str):
    good = tmp_path / "good.tsv"
    good.write_text(H + ROW * 1 + "B\tC\tneutral\nD\tE\tcontradiction\n")
    args, needles = {
        "missing": (["--train", tmp_path / "nope.tsv"], ("nope.tsv", "no such file")),
        "directory": (["--train", tmp_path], ("is a directory",)),
        "same-file-twice": (["--train", good, "--eval", good], ("good.tsv", "appears twice", "mnli:good:0")),
    }[source]
    check_unchanged(capsys, tiny_workspace, ["prepare", "-w", tiny_workspace, *args, *TINY], *needles)


# ---- bad option values ----------------------------------------------------------------------------
OPTIONS = {
    "prepare-holdout": (
        ["prepare", "--train", "demo", "--holdout", "1.5"],
        ("holdout=1.5", "0 <= holdout < 1"),
    ),
    "prepare-neighbors": (["prepare", "--train", "demo", "--neighbors", "0"], ("neighbors=0", ">= 1")),
    "prepare-max-eval-zero": (["prepare", "--max-eval", "0"], ("--max-eval", "integer >= 1")),
    "prepare-max-eval-text": (["prepare", "--max-eval", "many"], ("--max-eval", "'many'")),
    "prepare-labels": (["prepare", "--labels", "4"], ("--labels", "choose from 2, 3")),
    "prepare-epochs": (["prepare", "--epochs", "0"], ("epochs=0", "> 0")),
    "prepare-max-length": (["prepare", "--max-length", "2"], ("max_length=2", ">= 8")),
    "prepare-max-train": (["prepare", "--max-train", "1"], ("max_train=1", ">= 2")),
    "prepare-fit-subset-zero": (["prepare", "--fit-subset", "0"], ("--fit-subset", "integer >= 1")),
    "prepare-fit-subset-too-big": (
        ["prepare", "--train", "demo", "--demo-size", "60", "--holdout", "0", "--fit-subset", "61"],
        ("fit_subset=61", "allowed 1 to 60"),
    ),
    "prepare-index": (["prepare", "--index", "Bogus,Flat"], ("index='Bogus,Flat'", "'IVF1024,Flat'")),
    "prepare-nprobe": (["prepare", "--nprobe", "0"], ("--nprobe", ">= 1")),
    "prepare-seed": (["prepare", "--seed", "x"], ("--seed", "invalid int value")),
    "prepare-lr": (["prepare", "--lr", "-1"], ("lr=-1", "> 0")),
    "examples-limit-zero": (["examples", "--limit", "0"], ("--limit", ">= 1")),
    "examples-limit-text": (["examples", "--limit", "ten"], ("--limit", "'ten'")),
    "influence-unknown-id": (
        ["influence", "--example", "no-such-id", *FAST],
        ("'no-such-id'", "fastif examples"),
    ),
    "influence-k-too-large": (["influence", "--example", EXAMPLE, "--k", "100000"], ("k=100000", "60")),
    "influence-depth": (["influence", "--example", EXAMPLE, "--depth", "0"], ("depth=0", ">= 1")),
    "influence-damping": (["influence", "--example", EXAMPLE, "--damping", "2"], ("damping=2", "< 1")),
    "influence-k-text": (["influence", "--example", EXAMPLE, "--k", "all"], ("--k", "'all'")),
    "influence-full-and-k": (
        ["influence", "--example", EXAMPLE, "--full", "--k", "5"],
        ("not allowed with",),
    ),
    "influence-no-example": (["influence"], ("required", "--example")),
    "submit-unknown-id": (
        ["submit", "influence", "--example", "no-such-id", "--k", "5"],
        ("'no-such-id'", "fastif examples"),
    ),
    "submit-k-too-large": (["submit", "influence", "--example", EXAMPLE, "--k", "999"], ("k=999", "60")),
    "submit-prepare-holdout": (["submit", "prepare", "--holdout", "2"], ("holdout=2",)),
    "submit-no-kind": (["submit"], ("required", "KIND")),
    "submit-rerank-exact": (
        ["submit", "influence", "--example", EXAMPLE, "--k", "5", "--rerank", "3"],
        ("--rerank", "--method sketch"),
    ),
    "submit-sketch-full": (
        ["submit", "influence", "--example", EXAMPLE, "--full", "--method", "sketch"],
        ("--full", "--k K"),
    ),
    "submit-sketch-many": (
        ["submit", "influence", "--examples", EXAMPLE, "--k", "5", "--method", "sketch"],
        ("one --example ID",),
    ),
    "jobs-cancel-unknown": (["jobs", "--cancel", "999"], ("job 999 does not exist",)),
    "jobs-status": (["jobs", "--status", "bogus"], ("--status", "'bogus'", "queued")),
    "worker-poll": (["worker", "--poll", "0"], ("--poll", "> 0")),
    "worker-lease": (["worker", "--lease-seconds", "-5"], ("--lease-seconds", "> 0")),
    "bench-ks": (["bench", "--out", "OUT", "--ks", "a,b"], ("--ks", "comma-separated")),
    "bench-test-examples": (["bench", "--out", "OUT", "--test-examples", "0"], ("test_examples=0", ">= 1")),
    "bench-no-out": (["bench"], ("--out", "required")),
    "bench-ref-shard": (
        ["bench", "--out", "OUT", "--section", "solvers", "--ref-shard", "2/2"],
        ("--ref-shard", "0 <= I < N"),
    ),
    "bench-solver-parts": (
        ["bench", "--out", "OUT", "--section", "solvers", "--solver-parts", "refs"],
        ("--solver-parts", "reference, compare, l2, click"),
    ),
    "bench-damping-mus": (
        ["bench", "--out", "OUT", "--section", "damping", "--damping-mus", "a,b"],
        ("--damping-mus", "'a,b'", "numbers > 0"),
    ),
    "bench-damping-mu-zero": (
        ["bench", "--out", "OUT", "--section", "damping", "--damping-mus", "50,0"],
        ("--damping-mus", "'50,0'", "numbers > 0"),
    ),
    "bench-damping-depth": (
        ["bench", "--out", "OUT", "--section", "damping", "--damping-depth", "0"],
        ("--damping-depth", "integer >= 1"),
    ),
    "bench-retrain-max-runs": (
        ["bench", "--out", "OUT", "--section", "damping", "--retrain", "--retrain-max-runs", "0"],
        ("--retrain-max-runs", "integer >= 1"),
    ),
    "bench-retrain-ms": (
        ["bench", "--out", "OUT", "--section", "damping", "--retrain", "--retrain-ms", "10,0"],
        ("retrain_ms=(10, 0)", "integers >= 1"),
    ),
    "bench-damping-shard-retrain": (
        ["bench", "--out", "OUT", "--section", "damping", "--retrain", "--ref-shard", "1/2"],
        ("--retrain needs the whole sweep", "--ref-shard"),
    ),
    "corpus-no-out": (["corpus"], ("--out", "required")),
    "corpus-train-size-zero": (
        ["corpus", "--out", "never-written.tsv", "--train-size", "0"],
        ("--train-size", "integer >= 1"),
    ),
    "unknown-command": (["frobnicate"], ("invalid choice", "prepare")),
}


@pytest.mark.parametrize("case", sorted(OPTIONS))
def test_bad_option_values(tiny_workspace: Path, tmp_path: Path, capsys, case: str):
    args, needles = OPTIONS[case]
    if args[0] not in ("corpus", "frobnicate") and args != ["submit"]:
        args = _with_workspace(args, tiny_workspace, tmp_path / "out")
    check_unchanged(capsys, tiny_workspace, args, *needles)


# ---- missing, unprepared and damaged workspaces -----------------------------------------------------
COMMANDS = {
    "examples": ["examples"],
    "influence": ["influence", "--example", EXAMPLE, *FAST],
    "submit": ["submit", "influence", "--example", EXAMPLE, "--k", "5"],
    "jobs": ["jobs"],
    "worker": ["worker", "--once"],
    "bench": ["bench", "--out", "OUT", "--quick"],
}


def _with_workspace(command: list[str], ws: Path, out: Path) -> list[str]:
    at = 2 if command[0] == "submit" else 1
    rest = [str(out) if a == "OUT" else a for a in command[at:]]
    return [*command[:at], "-w", str(ws), *rest]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_missing_workspace_is_refused_not_created(tmp_path: Path, capsys, command: str):
    ws = tmp_path / "typo"
    code, _, err = run_cli(capsys, _with_workspace(COMMANDS[command], ws, tmp_path / "out"))
    assert_one_line(code, err, str(ws), "does not exist", "fastif prepare --workspace")
    assert not ws.exists()


@pytest.mark.parametrize("command", ["examples", "influence", "submit", "bench"])
def test_an_unprepared_workspace_is_refused(tmp_path: Path, capsys, command: str):
    from fastif_core.store import Store

    ws = tmp_path / "fresh"
    Store.open(ws).close()  # a database, no manifest (e.g. the dashboard opened it)
    check_unchanged(
        capsys,
        ws,
        _with_workspace(COMMANDS[command], ws, tmp_path / "out"),
        "is not prepared",
        "fastif prepare --workspace",
    )


def _build(ws: Path) -> Path:
    manifest = json.loads((ws / "workspace.json").read_text())
    return ws / "builds" / manifest["build"]


def _model(ws: Path) -> Path:
    manifest = json.loads((ws / "workspace.json").read_text())
    return ws / "models" / str(manifest["model_id"])


DAMAGE = {
    "manifest-truncated": (
        lambda ws: (ws / "workspace.json").write_bytes((ws / "workspace.json").read_bytes()[:50]),
        ("workspace.json", "corrupt manifest", "line"),
    ),
    "manifest-not-object": (lambda ws: (ws / "workspace.json").write_text("[1, 2]"), ("corrupt manifest",)),
    "manifest-binary": (
        lambda ws: (ws / "workspace.json").write_bytes(b"\xff\xfe\x00garbage"),
        ("workspace.json", "corrupt manifest"),
    ),
    "manifest-bad-model-id": (
        lambda ws: (ws / "workspace.json").write_text(
            json.dumps({**json.loads((ws / "workspace.json").read_text()), "model_id": "seven"})
        ),
        ("corrupt manifest", "'model_id'", "'seven'"),
    ),
    "database-garbage": (
        lambda ws: (
            [p.unlink() for p in ws.glob("fastif.db-*")]
            and None
            or (ws / "fastif.db").write_bytes(b"this is not a database" * 100)
        ),
        ("fastif.db", "not a database"),
    ),
}
LOAD_DAMAGE = {
    "index-truncated": (
        lambda ws: (_build(ws) / "index.faiss").write_bytes(b"IxF2" + b"\x00" * 10),
        ("index.faiss", "not a readable FAISS index"),
    ),
    "index-missing": (
        lambda ws: (_build(ws) / "index.faiss").unlink(),
        ("index.faiss", "does not exist", "prepare"),
    ),
    "features-garbage": (
        lambda ws: (_build(ws) / "features.safetensors").write_bytes(b"\x08\x00\x00\x00garbage"),
        ("features.safetensors", "not a readable features file", "re-run"),
    ),
    "checkpoint-missing": (
        lambda ws: [p.unlink() for p in _model(ws).iterdir()],
        ("fastif_train.json", "missing", "run prepare"),
    ),
    "checkpoint-garbage": (
        lambda ws: (_model(ws) / "model.safetensors").write_bytes(b"\x10\x00garbage"),
        ("models/", "cannot be loaded", "re-run"),
    ),
}


@pytest.mark.parametrize("command", ["examples", "influence", "submit", "bench"])
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_workspace_is_one_line(
    tiny_workspace: Path, tmp_path: Path, capsys, damage: str, command: str
):
    mutate, needles = DAMAGE[damage]
    mutate(tiny_workspace)
    check_unchanged(
        capsys, tiny_workspace, _with_workspace(COMMANDS[command], tiny_workspace, tmp_path / "o"), *needles
    )


@pytest.mark.parametrize("damage", sorted(LOAD_DAMAGE))
def test_damaged_artefacts_are_one_line(tiny_workspace: Path, tmp_path: Path, capsys, damage: str):
    mutate, needles = LOAD_DAMAGE[damage]
    mutate(tiny_workspace)
    check_unchanged(
        capsys, tiny_workspace, _with_workspace(COMMANDS["influence"], tiny_workspace, tmp_path), *needles
    )


# ---- the database ---------------------------------------------------------------------------------
DB_URLS = {
    "not-a-url": ("notaurl", ("FASTIF_DB_URL=notaurl", "not a usable SQLAlchemy URL")),
    "unknown-dialect": ("foo://host/db", ("FASTIF_DB_URL=foo://host/db", "not a usable")),
    "missing-driver": ("postgresql+psycopg2://u@127.0.0.1/db", ("psycopg2", "not installed", "pip install")),
    "refused": ("postgresql+psycopg://u@127.0.0.1:1/db", ("127.0.0.1", "refused")),
}


@pytest.mark.parametrize("command", ["examples", "jobs", "submit", "worker"])
@pytest.mark.parametrize("url", sorted(DB_URLS))
def test_a_bad_database_url(
    tiny_workspace: Path, tmp_path: Path, capsys, monkeypatch, url: str, command: str
):
    value, needles = DB_URLS[url]
    monkeypatch.setenv("FASTIF_DB_URL", value)
    check_unchanged(
        capsys, tiny_workspace, _with_workspace(COMMANDS[command], tiny_workspace, tmp_path), *needles
    )


@pytest.mark.parametrize("command", ["examples", "jobs", "submit"])
def test_a_locked_database(tiny_workspace: Path, tmp_path: Path, capsys, monkeypatch, command: str):
    monkeypatch.setenv("FASTIF_DB_BUSY_TIMEOUT_MS", "200")
    holder = sqlite3.connect(tiny_workspace / "fastif.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process in the middle of a long write
    try:
        code, _, err = run_cli(capsys, _with_workspace(COMMANDS[command], tiny_workspace, tmp_path))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert_one_line(code, err, "is locked by another process", "0.2 s", "retry")


# ---- real subprocesses ----------------------------------------------------------------------------
def fastif(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "fastif_core", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.parametrize("case", ["binary-garbage", "manifest-truncated", "bad-url", "submit-unknown-id"])
def test_subprocess_errors_are_one_line(tiny_workspace: Path, tmp_path: Path, case: str):
    env, needles = None, ()
    if case == "binary-garbage":
        args, needles = (
            ["prepare", "-w", tiny_workspace, "--train", write_case(tmp_path, case), *TINY],
            ("not UTF-8",),
        )
    elif case == "manifest-truncated":
        DAMAGE[case][0](tiny_workspace)
        args, needles = ["examples", "-w", tiny_workspace], ("corrupt manifest",)
    elif case == "bad-url":
        args, env, needles = ["jobs", "-w", tiny_workspace], {"FASTIF_DB_URL": "notaurl"}, ("FASTIF_DB_URL",)
    else:
        args, needles = (
            ["submit", "influence", "-w", tiny_workspace, "--example", "nope", "--k", "5"],
            ("'nope'",),
        )
    before = workspace_digest(tiny_workspace)
    proc = fastif(*args, env=env)
    assert_one_line(proc.returncode, proc.stderr, *needles)
    assert workspace_digest(tiny_workspace) == before
