import json

import h5py
import numpy as np
import pytest

from tokenscale import TokenscaleError
from tokenscale.config import validate_config
from tokenscale.data import EOS, TrainTokens, build_corpus, builtin_documents, load_tokenizer

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


def test_corpus_deterministic_hash_and_disjoint_split(tmp_path):
    m1 = build_corpus(_data_cfg(), tmp_path / "a")
    m2 = build_corpus(_data_cfg(), tmp_path / "b")
    assert m1["corpus_sha256"] == m2["corpus_sha256"]
    assert m1["corpus_sha256"] != build_corpus(_data_cfg(split_seed=1), tmp_path / "c")["corpus_sha256"]
    src = lambda p: {json.loads(x)["source"] for x in p.read_text().splitlines()}  # noqa: E731
    train, valid = src(tmp_path / "a" / "train.jsonl"), src(tmp_path / "a" / "valid.jsonl")
    assert train and valid and not (train & valid)


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
        assert np.array_equal(ids[1:, 0], ids[:-1, -1])  # consecutive windows: every target appears once
        dom, pos, doc = f["domain"][:], f["doc_pos"][:], f["doc_id"][:]
        names = json.loads(f.attrs["domain_names"])
        assert set(np.unique(dom)) <= set(range(len(names)))
        flat_pos, flat_doc = pos.ravel(), doc.ravel()
        same = flat_doc[1:] == flat_doc[:-1]
        assert np.all(flat_pos[1:][same] == flat_pos[:-1][same] + 1)  # positions advance inside a document
        assert f.attrs["tokenizer_sha256"] == tt.meta["tokenizer_sha256"]
    assert load_tokenizer(data_dir / "tokenizer" / "tokenizer.json").convert_tokens_to_ids(EOS) == tt.meta["eos_id"]


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
