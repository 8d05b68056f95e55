"""Token shards: tokenise once, memory-map, read rows lazily; the sequences are those packing cuts in
memory, and a run on them trains and resumes exactly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from moe.data.packing import pack
from moe.data.split import is_validation
from moe.data.token_shards import MANIFEST, build_tokens
from moe.data.tokenize_shards import tokenize_to_shards

ROWS = [{"text": f"document {i}: " + "lorem ipsum " * (1 + i % 9), "source": ["news", "wiki"][i % 2]}
        for i in range(400)]
S = 16


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return root


def split_docs(side: str, domain: str) -> list[bytes]:
    return [r["text"].encode() for i, r in enumerate(ROWS)
            if r["source"] == domain and is_validation(f"row:{i}", 0.05) == (side == "val")]


def test_one_shard_per_domain_gives_exactly_the_packed_sequences(corpus):
    tokenize_to_shards(out=corpus / "one", path="json", data_files=str(corpus / "corpus.jsonl"),
                       domain_field="source", num_proc=2)
    data = build_tokens(path=str(corpus / "one"), seq_len=S)
    assert data.domains == ("news", "wiki")
    for side in ("train", "val"):
        split = getattr(data, side)
        for d, domain in enumerate(data.domains):
            expected = pack(split_docs(side, domain), seq_len=S, eos_id=256)
            assert torch.equal(split.input_ids[torch.nonzero(split.domain_ids == d).flatten()], expected)
    stream = np.concatenate([np.append(np.frombuffer(doc, np.uint8), 256) for domain in data.domains
                             for doc in split_docs("train", domain)])
    p = np.bincount(stream) / len(stream)
    assert data.unigram_entropy == pytest.approx(float(-(p[p > 0] * np.log(p[p > 0])).sum()), rel=1e-12)


def test_small_shards_keep_every_document_and_cut_each_file_alone(corpus):
    manifest = tokenize_to_shards(out=corpus / "small", path="json", data_files=str(corpus / "corpus.jsonl"),
                                  domain_field="source", shard_tokens=300)
    news = manifest["files"]["train"]["news"]
    assert len(news) > 3 and all(tokens <= 300 for _, tokens in news)
    files = [np.fromfile(corpus / "small" / name, dtype=np.uint16) for name, _ in news]
    assert [len(f) for f in files] == [tokens for _, tokens in news]
    docs = split_docs("train", "news")
    assert np.array_equal(np.concatenate(files), np.concatenate([np.append(np.frombuffer(d, np.uint8), 256)
                                                                 for d in docs]))
    data = build_tokens(path=str(corpus / "small"), seq_len=S)
    first_file_rows = len(files[0]) // (S + 1)
    assert torch.equal(data.train.input_ids[first_file_rows],
                       torch.from_numpy(files[1][:S + 1].astype(np.int64)))  # row 0 of the second file


def test_rows_index_like_a_tensor(corpus):
    rows = build_tokens(path=str(corpus / "one"), seq_len=S).train.input_ids
    whole = rows[torch.arange(len(rows))]
    assert whole.shape == rows.shape and whole.dtype == torch.long
    assert torch.equal(rows[3], whole[3]) and torch.equal(rows[2:7], whole[2:7])
    assert torch.equal(rows[[5, 1]], whole[[5, 1]]) and torch.equal(rows[torch.tensor([4, 0]), :-1], whole[[4, 0], :-1])
    with pytest.raises(IndexError, match="out of range"):
        rows[len(rows)]


def test_training_on_token_shards_resumes_exactly(tmp_path, corpus):
    from conftest import compose

    from moe.training import run

    def smoke(*overrides, run_dir):
        return compose("experiment=smoke", "logger=none", "trainer.progress=false", *overrides, run_dir=run_dir)

    overrides = ("data=tokens", f"data.path={corpus / 'one'}", "model.max_seq_len=16", "trainer.max_steps=6",
                 "trainer.save_every=3", "trainer.keep_last=0", "trainer.log_every=1",
                 "trainer.eval_sequences_per_domain=2")
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    summary = run(smoke(*overrides, run_dir=full))
    assert summary["step"] == 6 and set(summary["val_domain_losses"]) == {"val/news/loss", "val/wiki/loss"}
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_0000006")
    run(smoke(*overrides, "trainer.resume=true", run_dir=resumed))
    lines = [[json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (full, resumed)]
    assert lines[0] == lines[1]


def test_bad_input_is_one_line(corpus, tmp_path):
    with pytest.raises(FileExistsError, match="exists; token shards are written to a new directory"):
        tokenize_to_shards(out=corpus / "one", path="json", data_files=str(corpus / "corpus.jsonl"))
    with pytest.raises(FileNotFoundError, match=r"no manifest.json \(write token shards with"):
        build_tokens(path=str(tmp_path), seq_len=S)
    with pytest.raises(ValueError, match=r"no train sequence of seq_len\+1=100001 tokens in the shards; lower"):
        build_tokens(path=str(corpus / "one"), seq_len=100_000)
    broken = tmp_path / "broken"
    shutil.copytree(corpus / "one", broken)
    name = json.loads((broken / MANIFEST).read_text())["files"]["train"]["news"][0][0]
    (broken / name).unlink()
    with pytest.raises(FileNotFoundError, match=f"token shard .*{name} listed in manifest.json is missing"):
        build_tokens(path=str(broken), seq_len=S)
    done = subprocess.run([sys.executable, "-m", "moe.data.tokenize_shards", "--out", str(tmp_path / "x"), "--path",
                           "json", "--data-files", str(tmp_path / "none.jsonl")], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == f"moe-lab: error: data.data_files: {tmp_path / 'none.jsonl'} matches no file"


def test_a_fixed_training_subset_of_token_shards_is_a_clear_error(tmp_path, corpus):
    from conftest import compose

    from moe.training import run

    config = compose("experiment=smoke", "logger=none", "data=tokens", f"data.path={corpus / 'one'}",
                     "model.max_seq_len=16", "trainer.train_sequences_per_domain=4", run_dir=tmp_path / "run")
    with pytest.raises(ValueError, match=r"trainer.train_sequences_per_domain=4 needs in-memory data"):
        run(config)
    assert not (tmp_path / "run").exists()
