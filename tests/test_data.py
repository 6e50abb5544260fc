import hashlib
import importlib.metadata
import json
import re

import h5py
import numpy as np
import pytest

from tokenscale import TokenscaleError
from tokenscale.config import validate_config
from tokenscale.data import (EOS, TOKENIZER_META, TrainTokens, build_corpus, build_token_set, builtin_documents,
                             load_tokenizer, train_tokenizer)
from tokenscale.data.corpus import _builtin_documents, _fill
from tokenscale.data.tokenizer import _encode_docs, _encode_fast

from conftest import TINY_DATA, run_cli, tiny_config, write_config


def _data_cfg(**kw):
    return validate_config({"data": {**TINY_DATA, **kw}})["data"]


def test_builtin_corpus_is_real_multidomain_text():
    docs = builtin_documents(["docs", "docstrings", "code"], max_chars=20000)
    by = {d["domain"] for d in docs}
    assert by == {"docs", "docstrings", "code"}
    code = next(d for d in docs if d["domain"] == "code")
    assert "def " in code["text"] or "import " in code["text"]
    assert all(sum(len(d["text"]) for d in docs if d["domain"] == dom) <= 20000 for dom in by)
    assert {d["package"] for d in docs} == {"stdlib"}  # no packages listed: the standard library only


def test_builtin_packages_spread_over_packages():
    """Every package gives text to every domain, the cap takes documents from all of them (not the first package
    alphabetically), and nothing comes from test folders."""
    pk = ["jsonschema", "numpy", "yaml"]
    docs = builtin_documents(["docs", "docstrings", "code"], max_chars=200000, packages=pk)
    for dom in ("docstrings", "code"):
        part = [d for d in docs if d["domain"] == dom]
        assert sum(len(d["text"]) for d in part) == 200000
        assert {d["package"] for d in part} == {"stdlib", *pk}
    assert {d["package"] for d in docs if d["domain"] == "docs"} >= {"stdlib", "numpy"}  # pydoc topics, numpy's README
    assert any(d["source"].startswith("stdlib:pydoc_data.topics:") for d in docs)
    assert not [d for d in docs if re.search(r"[:/]tests?/", d["file"])]
    assert len({d["source"] for d in docs}) == len(docs) and any(d["source"].endswith("#1") for d in docs)  # chunked


def test_fill_takes_from_the_group_with_fewest_chars_known_answer():
    def group(name, sizes, text=None):
        return iter([{"source": f"{name}{i}", "text": text or f"{name}{i}".ljust(n, ".")} for i, n in enumerate(sizes)])

    pick = lambda out: [(d["source"], len(d["text"])) for d in out]  # noqa: E731
    # heap order: a (0), b (0), c (0) -> a=10, b=25, c=5 -> c again (5 < 10) ...
    assert pick(_fill({"b": group("b", [25]), "a": group("a", [10, 10, 10]), "c": group("c", [5, 5])}, 40)) == \
        [("a0", 10), ("b0", 25), ("c0", 5)]
    assert pick(_fill({"b": group("b", [25]), "a": group("a", [10, 10, 10]), "c": group("c", [5, 5])}, 38)) == \
        [("a0", 10), ("b0", 25), ("c0", 3)]  # the last document is cut to the cap
    assert pick(_fill({"b": group("b", [25]), "a": group("a", [10, 10, 10]), "c": group("c", [5, 5])}, None)) == \
        [("a0", 10), ("b0", 25), ("c0", 5), ("c1", 5), ("a1", 10), ("a2", 10)]  # uncapped: everything
    assert pick(_fill({"a": group("a", [3, 3], text="same"), "b": group("b", [3], text="same")}, None)) == [("a0", 4)]  # duplicates once


def test_bad_builtin_package_one_line(tmp_path):
    _builtin_documents.cache_clear()
    with pytest.raises(TokenscaleError, match=r"^data\.builtin_packages: package 'no_such_package_xyz' is not installed in this "
                                              r"Python environment \(.*\)$"):
        build_corpus(_data_cfg(builtin_packages=["numpy", "no_such_package_xyz"]), tmp_path / "o")
    with pytest.raises(TokenscaleError, match=r"^data\.builtin_packages: 'json' is part of the standard library"):
        build_corpus(_data_cfg(builtin_packages=["json"]), tmp_path / "o")
    with pytest.raises(TokenscaleError, match=r"data\.builtin_packages\[0\]: 'numpy\.linalg' does not match"):
        _data_cfg(builtin_packages=["numpy.linalg"])


def test_manifest_records_each_package(tmp_path):
    """Per package: name, version, files, docs, chars and a sha256 that a reviewer can recompute from the corpus."""
    m = build_corpus(_data_cfg(builtin_packages=["yaml", "jsonschema"]), tmp_path / "c")
    assert [p["name"] for p in m["packages"]] == ["stdlib", "jsonschema", "yaml"]
    assert m["data_config"]["builtin_packages"] == ["yaml", "jsonschema"]
    rows = [json.loads(x) for f in ("train.jsonl", "valid.jsonl") for x in (tmp_path / "c" / f).read_text().splitlines()]
    versions = {"stdlib": m["python"], "jsonschema": importlib.metadata.version("jsonschema"), "yaml": importlib.metadata.version("PyYAML")}
    for p in m["packages"]:
        mine = sorted((r for r in rows if r["source"].startswith(p["name"] + ":")), key=lambda r: r["source"])
        h = hashlib.sha256()
        for r in mine:
            h.update(r["source"].encode() + b"\0" + r["text"].encode() + b"\n")
        files = {re.sub(r"(:docstrings)?#\d+$", "", r["source"]) for r in mine}
        assert p["version"] == versions[p["name"]] and p["sha256"] == h.hexdigest()
        assert (p["docs"], p["chars"], p["files"]) == (len(mine), sum(len(r["text"]) for r in mine), len(files)) and p["docs"] > 0
        assert sum(v["chars"] for v in p["domains"].values()) == p["chars"]
    assert sum(p["chars"] for p in m["packages"]) == sum(v["chars"] for s in m["splits"].values() for v in s.values())


def test_corpus_deterministic_hash_and_disjoint_split(tmp_path):
    m1 = build_corpus(_data_cfg(), tmp_path / "a")
    _builtin_documents.cache_clear()  # the second build reads the files again
    m2 = build_corpus(_data_cfg(), tmp_path / "b")
    assert m1["corpus_sha256"] == m2["corpus_sha256"] and m1["packages"] == m2["packages"]
    assert m1["corpus_sha256"] != build_corpus(_data_cfg(split_seed=1), tmp_path / "c")["corpus_sha256"]
    src = lambda p: {json.loads(x)["source"] for x in p.read_text().splitlines()}  # noqa: E731
    train, valid = src(tmp_path / "a" / "train.jsonl"), src(tmp_path / "a" / "valid.jsonl")
    assert train and valid and not (train & valid)
    # a file's chunks, its code and its docstrings go to the same split
    file = lambda srcs: {re.sub(r"(:docstrings)?#\d+$", "", x) for x in srcs}  # noqa: E731
    assert not (file(train) & file(valid))


def test_user_corpora_text_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("First block of prose.\n\nSecond block here.\n\n" * 20)
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": f"math {i} + {i}", "domain": "math"}) for i in range(30)))
    cfg = _data_cfg(builtin=False, valid_fraction=0.2, corpora=[{"path": str(tmp_path / "a.txt"), "domain": "prose"},
                                                                 {"path": str(tmp_path / "b.jsonl")}])
    m = build_corpus(cfg, tmp_path / "out")
    assert m["domains"] == ["math", "prose"]


def test_missing_and_empty_corpus_errors(tmp_path):
    with pytest.raises(TokenscaleError, match=r"^data\.corpora\[0\]\.path: corpus file not found: .*missing\.txt$"):
        build_corpus(_data_cfg(builtin=False, corpora=[{"path": str(tmp_path / "missing.txt")}]), tmp_path / "o")
    (tmp_path / "empty.txt").write_text("\n\n   \n")
    with pytest.raises(TokenscaleError, match=r"^data: corpus is empty"):
        build_corpus(_data_cfg(builtin=False, corpora=[{"path": str(tmp_path / "empty.txt")}]), tmp_path / "o")
    (tmp_path / "bad.jsonl").write_text('{"txt": "x"}\n')
    with pytest.raises(TokenscaleError, match=r"bad\.jsonl:1: each JSONL row needs a string field 'text'"):
        build_corpus(_data_cfg(builtin=False, corpora=[{"path": str(tmp_path / "bad.jsonl")}]), tmp_path / "o")


def test_cli_missing_corpus_one_line(tmp_path):
    cfg = tiny_config()
    cfg["data"]["corpora"] = [{"path": str(tmp_path / "nope.jsonl")}]
    p = run_cli("prepare-data", "--config", write_config(tmp_path / "c.yaml", cfg), "--out", tmp_path / "d", check=False)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith("tokenscale: error: data.corpora[0].path: corpus file not found")


def test_prepared_data_layout(data_dir):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(data_dir / "tokenizer"))
    assert len(tok) == TINY_DATA["vocab_size"] and tok.eos_token == EOS
    assert tok.decode(tok("def f(x):\n    return x")["input_ids"]) == "def f(x):\n    return x"  # byte-level round trip
    tt = TrainTokens(data_dir)
    assert len(tt) == (tt.meta["n_tokens"] - 1) // 16
    b = tt.batch(np.array([0, 1]))
    assert b.shape == (2, 17) and b[0, -1] == b[1, 0]  # windows overlap by one token
    with h5py.File(data_dir / "valid_tokens.h5") as f:
        ids = f["input_ids"][:]
        assert ids.shape == (16, 17) and np.array_equal(f["token_id"][:], ids[:, 1:])
        dom, pos, doc = f["domain"][:], f["doc_pos"][:], f["doc_id"][:]
        names = json.loads(f.attrs["domain_names"])
        assert set(np.unique(dom)) <= set(range(len(names)))
        same = doc[:, 1:] == doc[:, :-1]
        assert np.all(pos[:, 1:][same] == pos[:, :-1][same] + 1)  # positions advance inside a document
        assert len(set(zip(doc.ravel(), pos.ravel()))) == doc.size  # no target token twice
        assert f.attrs["tokenizer_sha256"] == tt.meta["tokenizer_sha256"]
    assert load_tokenizer(data_dir / "tokenizer" / "tokenizer.json").convert_tokens_to_ids(EOS) == tt.meta["eos_id"]
    # what the trainer's single-pass check reads
    assert tt.meta["single_pass_tokens"] == tt.meta["n_samples"] * 16 and tt.meta["n_docs"] > 0
    assert sum(tt.meta["domain_tokens"].values()) == tt.meta["n_tokens"]
    tmeta = json.loads((data_dir / "tokenizer" / TOKENIZER_META).read_text())
    assert tmeta["subsampled"] is False and tmeta["sample_docs"] == tmeta["train_docs"] == tt.meta["n_docs"]


def test_invalid_utf8_in_corpora_is_replaced_and_reported(tmp_path, capsys):
    """Invalid UTF-8 becomes U+FFFD as before, but each file with replacements gets one stderr line with the count."""
    txt = tmp_path / "latin1.txt"
    # \xff and \xe9 (Latin-1 bytes) and a cut 3-byte sequence \xe2\x82: three replacements; the literal,
    # validly encoded U+FFFD (\xef\xbf\xbd) is not counted
    txt.write_bytes(b"Caf\xe9 prose block one.\n\nSecond block \xff with a cut \xe2\x82 euro.\n\n"
                    b"A literal \xef\xbf\xbd stays.\n\n" + b"Filler prose paragraph.\n\n" * 20)
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_bytes(b'{"text": "bad \xc3( byte", "domain": "math"}\n'
                      + b"".join(json.dumps({"text": f"math {i} + {i}", "domain": "math"}).encode() + b"\n" for i in range(30)))
    clean = tmp_path / "clean.txt"
    clean.write_text("Clean block.\n\n" * 10)
    cfg = _data_cfg(builtin=False, valid_fraction=0.2, corpora=[{"path": str(txt), "domain": "prose"}, {"path": str(jsonl)},
                                                                 {"path": str(clean), "domain": "prose"}])
    build_corpus(cfg, tmp_path / "out")
    err = [x for x in capsys.readouterr().err.splitlines() if "warning" in x]
    assert err == [f"tokenscale: warning: {txt}: 3 invalid UTF-8 byte sequences replaced by U+FFFD",
                   f"tokenscale: warning: {jsonl}: 1 invalid UTF-8 byte sequence replaced by U+FFFD"]
    texts = [json.loads(x)["text"] for f in ("train.jsonl", "valid.jsonl") for x in (tmp_path / "out" / f).read_text().splitlines()]
    assert any(t.startswith("Caf\ufffd prose") for t in texts) and "bad \ufffd( byte" in texts  # replacement kept
    assert any("A literal \ufffd stays." in t for t in texts)
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_prepared_data_has_no_leftovers(data_dir):
    assert not list(data_dir.parent.rglob("*.tmp")) and not list(data_dir.parent.rglob("*.old"))


# --------------------------------------------------------------------------------------------- validation spread
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


def _planted_docs(n_long=(120, 100), n_short=60, seed=0):
    """Domains a and b: long documents (~40 words); domain c: short ones (3 words, fewer than seq_len tokens)."""
    rng = np.random.default_rng(seed)
    docs = []
    for dom, n in zip("ab", n_long):
        docs += [{"domain": dom, "text": " ".join(rng.choice(WORDS, 40))} for _ in range(n)]
    docs += [{"domain": "c", "text": " ".join(rng.choice(WORDS, 3))} for _ in range(n_short)]
    order = rng.permutation(len(docs))  # domains interleaved in the list
    return [{**docs[j], "id": i, "source": f"planted#{i}"} for i, j in enumerate(order)]


@pytest.fixture(scope="module")
def planted_tok(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    (root / "train.jsonl").write_text("".join(json.dumps(d) + "\n" for d in _planted_docs(seed=1)))
    return load_tokenizer(train_tokenizer(root / "train.jsonl", root / "tok", vocab_size=300, min_frequency=1))


def _token_set(path, docs, tok, n_seqs, seed=0):
    build_token_set(docs, tok, path, seq_len=16, n_seqs=n_seqs, shuffle_seed=seed, domain_names=["a", "b", "c"])
    with h5py.File(path) as f:
        return {k: f[k][:] for k in ("input_ids", "token_id", "doc_id", "doc_pos", "domain")}


def test_validation_sequences_come_from_distinct_documents(tmp_path, planted_tok):
    docs = _planted_docs()
    ts = _token_set(tmp_path / "v.h5", docs, planted_tok, 200)
    eos = planted_tok.convert_tokens_to_ids(EOS)
    enc = {d["id"]: e + [eos] for d, e in zip(docs, _encode_docs(planted_tok, docs))}
    # known answer: every target token is its document's token at doc_pos, in its document's domain
    for s in range(200):
        assert [enc[i][p] for i, p in zip(ts["doc_id"][s], ts["doc_pos"][s])] == ts["token_id"][s].tolist()
    dom_of = {d["id"]: "abc".index(d["domain"]) for d in docs}
    assert [dom_of[i] for i in ts["doc_id"].ravel()] == ts["domain"].ravel().tolist()
    # spread: each sequence starts in a different document, domains taken round-robin while all have documents
    assert len(set(ts["doc_id"][:, 0])) == 200 and len(np.unique(ts["doc_id"])) >= 200
    assert ts["domain"][:30, 0].tolist() == [0, 1, 2] * 10
    assert set(np.unique(ts["domain"])) == {0, 1, 2}
    # short documents (domain c) are joined with the next ones of their domain, EOS between, positions restart
    short = ts["domain"][:, 0] == 2
    assert np.all(ts["domain"][short] == 2) and np.any(ts["doc_pos"][short] == 0)
    assert len({(i, p) for i, p in zip(ts["doc_id"].ravel(), ts["doc_pos"].ravel())}) == ts["doc_id"].size  # no target twice


def test_validation_windows_deterministic_and_seeded(tmp_path, planted_tok):
    docs = _planted_docs()
    a, b = _token_set(tmp_path / "a.h5", docs, planted_tok, 64), _token_set(tmp_path / "b.h5", docs, planted_tok, 64)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = _token_set(tmp_path / "c.h5", docs, planted_tok, 64, seed=1)
    assert not np.array_equal(a["input_ids"], c["input_ids"])


def test_validation_windows_second_pass_and_too_few_tokens(tmp_path, planted_tok):
    """With fewer documents than sequences, documents give further non-overlapping windows after each gave one."""
    docs = [{"id": i, "domain": "a", "source": f"x#{i}", "text": " ".join(WORDS * 3) + f" {i}"} for i in range(3)]
    windows = sum((len(e) + 1) // 17 for e in _encode_docs(planted_tok, docs))
    ts = _token_set(tmp_path / "v.h5", docs, planted_tok, windows)
    assert sorted(ts["doc_id"][:3, 0]) == [0, 1, 2]  # first pass: one window per document
    assert len({(i, p) for i, p in zip(ts["doc_id"].ravel(), ts["doc_pos"].ravel())}) == ts["doc_id"].size
    with pytest.raises(TokenscaleError, match=rf"^token set: validation documents have only \d+ tokens, {windows} windows of 17; "
                                              rf"need {windows + 1} x 16"):
        build_token_set(docs, planted_tok, tmp_path / "w.h5", seq_len=16, n_seqs=windows + 1)


def test_tokenizer_subsample_recorded(tmp_path):
    docs = _planted_docs()
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    total = sum(len(d["text"]) for d in docs)
    metas = []
    for name in ("t1", "t2"):
        train_tokenizer(tmp_path / "train.jsonl", tmp_path / name, vocab_size=300, max_chars=total // 4, seed=3)
        metas.append(json.loads((tmp_path / name / TOKENIZER_META).read_text()))
    m = metas[0]
    assert metas[0] == metas[1] and m["subsampled"] is True and (m["train_docs"], m["train_chars"]) == (len(docs), total)
    assert total // 4 <= m["sample_chars"] < total // 4 + max(len(d["text"]) for d in docs) and m["sample_docs"] < len(docs)
    assert (tmp_path / "t1" / "tokenizer.json").read_bytes() == (tmp_path / "t2" / "tokenizer.json").read_bytes()


def test_fast_encoding_matches_tokenizer_call(data_dir):
    tok = load_tokenizer(data_dir / "tokenizer")
    docs = [json.loads(x) for x in (data_dir / "corpus" / "valid.jsonl").read_text().splitlines()]
    assert _encode_fast(tok, [d["text"] for d in docs]) == _encode_docs(tok, docs)
