"""The eval scripts on an imported Hugging Face MoE, scored with its own tokenizer on chat data."""

import pytest
from perplexity import perplexity_table
from routing_report import routing_report
from test_finetune import chat_rows, make_hf_mixtral, save_word_tokenizer, write_jsonl


@pytest.fixture(scope="module")
def hf_dir_and_rows(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_eval")
    make_hf_mixtral(root / "hf")
    return root / "hf", write_jsonl(root / "rows.jsonl", chat_rows())


def test_perplexity_and_routing_report_of_an_hf_moe(hf_dir_and_rows, tmp_path):
    hf_dir, rows = hf_dir_and_rows
    data = ["data=chat", f"data.data_files={rows}", "data.seq_len=32", "data.val_fraction=0.25"]
    table = perplexity_table(str(hf_dir), data)
    assert 0 < table["overall"]["loss"] < 10 and list(table["domains"]) == ["chat"]
    report = routing_report(str(hf_dir), tmp_path / "r", data, sequences_per_domain=4)
    assert sorted(report["layers"]) == ["0", "1"] and report["domains"] == "chat"


def test_an_hf_model_needs_a_data_config_with_its_tokenizer(hf_dir_and_rows):
    hf_dir, _ = hf_dir_and_rows
    with pytest.raises(ValueError, match="brings no data config"):
        perplexity_table(str(hf_dir), [])


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused(hf_dir_and_rows, tiny_run, tmp_path):
    _, rows = hf_dir_and_rows
    save_word_tokenizer(tmp_path / "tok", [" ".join(f"w{i}" for i in range(400))])
    with pytest.raises(ValueError, match="vocab_size=257"):  # the byte-level run
        perplexity_table(str(tiny_run[0]), ["data=chat", f"data.data_files={rows}",
                                            f"data.tokenizer={tmp_path / 'tok'}"])
