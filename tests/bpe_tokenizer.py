"""A small byte-level BPE tokenizer.json, trained offline on two stdlib modules: the stand-in for a Hugging
Face model's tokenizer in tests (vocabulary ``VOCAB``, end-of-document token ``EOS``)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

VOCAB, EOS = 320, "<|endoftext|>"


def save_bpe_tokenizer(directory: Path) -> Path:
    """Write tokenizer.json and tokenizer_config.json (naming ``EOS``) into ``directory``; returns it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([Path(json.__file__).read_text(), Path(textwrap.__file__).read_text()], trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": EOS}))
    return directory
