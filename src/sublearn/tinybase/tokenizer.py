"""A byte-level BPE tokenizer trained on the synthetic corpus, with a ChatML template.

Digits are split one per token by default, as Qwen2.5's tokenizer does, so a number sequence
is read and written the way the real model would see it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML, as Qwen uses it, without a default system prompt: injected defaults are a known
# confounder of subliminal-learning results.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int, individual_digits: bool = True,
                    words: Sequence[str] = ()):
    """Train BPE on `texts` and wrap it as a transformers fast tokenizer.

    `words` become single tokens wherever they stand as a whole word, with or without a
    leading space. A 1,024-token BPE spells "owls" in a system prompt as `Ġow l s` and the
    answer "owl" as `ow l`: a tiny model then has to learn a spelling map per option before it
    can follow a persona, and measurably does not (docs/organism.md). Whole-word tokens make
    following a persona a copy, as it is for a real model whose vocabulary holds the word.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=individual_digits),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(w, single_word=True, normalized=False) for w in words])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
