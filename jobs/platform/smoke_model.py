"""The smoke model: a tiny random Llama with a real tokenizer and chat template, built offline in seconds.

It exists so that every LLM stage can run end to end on a machine without GPUs or hub access (`make run`, CI).
Its text is noise: runs that use it say so in a banner, in the run summary, in lineage and on every row (the
model name is `SMOKE_MODEL_NAME`).
"""

from __future__ import annotations

import json
from pathlib import Path

SMOKE_MODEL_NAME = "megascience-smoke-model (random weights: output is noise)"
_MARKER = "megascience_smoke_model.json"

# A few KB of science-flavoured text so the byte-level BPE learns common English and math pieces.
_TOKENIZER_TEXT = """
Question: A car accelerates uniformly from rest to 20 m/s in 5 s. What is its acceleration?
Answer: a = (20 - 0) / 5 = 4 m/s^2. The final answer is \\boxed{4}.
Definition. A function f is continuous at a point if the limit equals the value of the function there.
The enzyme lowers the activation energy of the reaction; the rate constant k increases with temperature.
Solution. Differentiate f(x) = 3x^2 + 2x to get f'(x) = 6x + 2, so the slope at x = 1 is 8.
{"question": "What is the pH of a 0.01 M HCl solution?", "answer": "pH = -log10(0.01) = 2"}
{"verdict": "yes"} {"verdict": "no"} {"subject": "physics", "level": "university"} [] {} "" : , 0 1 2 3 4 5 6 7 8 9
The algorithm runs in O(n log n) time; the recurrence T(n) = 2T(n/2) + n solves to n log n.
Marginal cost equals marginal revenue at the profit-maximising quantity of output.
The patient presents with fever; the drug's half-life is 6 hours and its clearance is 5 L/h.
"""
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def is_smoke_model(path: str | Path) -> bool:
    return (Path(path) / _MARKER).is_file()


def build_smoke_model(directory: str | Path, vocab_size: int = 512, seed: int = 0) -> Path:
    """Write the tiny model (config, safetensors weights, tokenizer, chat template) into `directory`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    target = Path(directory)
    if is_smoke_model(target):
        return target
    target.mkdir(parents=True, exist_ok=True)
    special = ["<s>", "</s>", "<pad>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator([_TOKENIZER_TEXT] * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    tokenizer.save_pretrained(target)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,  # the CPU attention backend supports head sizes 32, 64, 80, ...
        max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(target, safe_serialization=True)
    (target / _MARKER).write_text(json.dumps({"name": SMOKE_MODEL_NAME, "seed": seed, "vocab_size": vocab_size}))
    return target
