"""Generate text from a checkpoint: ``python -m tbptt.sample checkpoint=PATH [temperature=0.8]``.

Other keys: ``length`` (characters to generate), ``prime`` (text to start from), ``seed``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tbptt import checkpoint
from tbptt.config import check
from tbptt.data import Vocab
from tbptt.errors import ConfigError
from tbptt.model import CharRNN


@dataclass
class SampleConfig:
    checkpoint: str = "???"
    temperature: float = 0.8
    length: int = 500
    prime: str = "\n"
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        check(self.length >= 1, f"length must be >= 1, got {self.length}")


@torch.no_grad()
def generate(model: CharRNN, vocab: Vocab, prime: str, length: int, temperature: float) -> str:
    model.eval()
    unknown = sorted(set(prime) - set(vocab.chars))
    if unknown:
        raise ConfigError(f"prime has characters the model never saw: {unknown}")
    hidden = model.init_hidden(1)
    x = vocab.encode(prime).view(-1, 1)  # (T, 1)
    out: list[int] = []
    for _ in range(length):
        logits, hidden = model(x, hidden)  # (T, 1, V)
        probs = torch.softmax(logits[-1, 0] / temperature, dim=-1)  # (V,)
        token = int(torch.multinomial(probs, 1))
        out.append(token)
        x = torch.tensor([[token]])
    return vocab.decode(out)


def parse(argv: list[str]) -> SampleConfig:
    # key=value pairs taken as raw strings (so prime="ROMEO:" stays text, not YAML), then typed
    # by the schema.
    pairs = dict(arg.partition("=")[::2] for arg in argv)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(SampleConfig), pairs)
    except OmegaConfBaseException as err:
        raise ConfigError(str(err).splitlines()[0]) from None
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise ConfigError("checkpoint=PATH is required (a run's checkpoint.pt)")
    opts = OmegaConf.to_object(cfg)
    assert isinstance(opts, SampleConfig)
    return opts


def main(argv: list[str]) -> str:
    opts = parse(argv)
    payload = checkpoint.load(opts.checkpoint)
    vocab = Vocab(payload["meta"]["vocab"])
    model = CharRNN(len(vocab), **payload["meta"]["model"])
    model.load_state_dict(payload["model"])
    torch.manual_seed(opts.seed)
    return opts.prime + generate(model, vocab, opts.prime, opts.length, opts.temperature)


if __name__ == "__main__":
    try:
        print(main(sys.argv[1:]))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
