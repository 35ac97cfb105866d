"""Typed schemas of the Hydra config groups, registered in Hydra's ConfigStore.

Every default lives here, once. The YAML files under ``conf/<group>/`` extend these schemas and
set only what names the option (``conf/model/gru.yaml`` sets ``cell: gru``).

One convention turns a group into its object: ``cfg.<group>.build(...)`` (a model, a corpus, an
optimizer, a BPTT schedule, the clippers, the budget). Each value is checked once: by the
library object it configures, whose constructor names the key (``bptt.k1 must be >= 1, got
0``), or, for values no object takes whole (the data splits, the optimizer's arguments, the
device), by the schema's ``__post_init__``, which runs when the entry point converts the
composed config (``OmegaConf.to_object``). ``tbptt.train.check`` builds every cheap object of a
config, so bad values fail before any data is read or compute spent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from hydra.utils import instantiate

from tbptt.clipping import Clipping, ErrorClip, NoClip, NormClip, ValueClip
from tbptt.contract import check_objective
from tbptt.data import (
    Corpus,
    LastSplit,
    Split,
    check_split,
    count_text,
    delayed_recall_text,
    read_text,
    split_text,
)
from tbptt.errors import ConfigError, first_line
from tbptt.model import CharRNN, check_shape
from tbptt.schedule import FixedSchedule, RandomSchedule, Schedule, UniformSchedule
from tbptt.trainer import Budget, Divergence, check_loss_window

LAST_SPLIT = LastSplit()  # a sweep worker's next trial of the same data reuses it


def check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_seed(seed: object, key: str = "seed") -> None:
    """A seed every random generator here takes (numpy's are 32-bit)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"{key} must be an integer in [0, 2**32), got {seed!r}")


def positive(value: float) -> bool:
    """Finite and > 0: inf passes a plain ``> 0`` and then trains on NaNs."""
    return math.isfinite(value) and value > 0


@dataclass
class ModelConfig:
    cell: str = "lstm"
    embed_size: int = 64
    hidden_size: int = 128
    layers: int = 2
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check_shape(**asdict(self))  # the model is built after the data: check it first

    def build(self, vocab_size: int) -> CharRNN:
        return CharRNN(vocab_size, **asdict(self))


@dataclass
class DataConfig:
    batch_size: int = 32
    eval_batch_size: int = 16
    # The corpus ends with the validation split, then the test split (held out: training and
    # sweeps never read it; `python -m tbptt.evaluate` does).
    val_fraction: float = 0.05
    test_fraction: float = 0.05

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, f"data.batch_size must be >= 1, got {self.batch_size}")
        check(
            self.eval_batch_size >= 1,
            f"data.eval_batch_size must be >= 1, got {self.eval_batch_size}",
        )
        check(
            0 < self.val_fraction < 1,
            f"data.val_fraction must be in (0, 1), got {self.val_fraction}",
        )
        check(
            0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1,
            "data.test_fraction must be in [0, 1) and leave a training split, got "
            f"data.val_fraction={self.val_fraction} + data.test_fraction={self.test_fraction}",
        )

    def build(self, window: int) -> Corpus:
        """Read (or generate) the text and split and batch it, or take the split this process
        made last of the same data; ``window``: the longest BPTT span the trainer will ask
        for."""
        split = LAST_SPLIT.get(self.identity(), self._split)
        check_split(split, window)
        return split.corpus

    def _split(self) -> Split:
        text, source = self.load_text()
        return split_text(
            text,
            source=source,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            batch_size=self.batch_size,
            eval_batch_size=self.eval_batch_size,
        )

    def identity(self) -> object:
        """What the split is made from: these settings (a file's data also by its file)."""
        return (type(self).__name__, tuple(asdict(self).items()))

    def load_text(self) -> tuple[str, str]:
        """The text and the name error messages give it: each data option's own source."""
        raise NotImplementedError  # the options below; the base schema names no source

    def meta(self) -> dict[str, Any]:
        """What a checkpoint stores to rebuild this corpus's splits (see corpus_from_meta)."""
        return {"kind": type(self).__name__, **asdict(self)}


@dataclass
class FileDataConfig(DataConfig):
    path: str = "data/shakespeare.txt"

    def load_text(self) -> tuple[str, str]:
        return read_text(self.path, key="data.path"), f"data.path={self.path}"

    def check_source(self) -> None:
        """The file reads as text: known where this process split it last, else read now."""
        if not LAST_SPLIT.holds(self.identity()):
            self.load_text()

    def identity(self) -> object:
        """... and the file as it is now (None: not readable; ``load_text`` says why)."""
        try:
            path = Path(self.path).expanduser().resolve()
            stat = path.stat()
        except OSError:
            return None
        return (super().identity(), str(path), stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def meta(self) -> dict[str, Any]:
        return {**super().meta(), "path": str(Path(self.path).expanduser().resolve())}


@dataclass
class CountDataConfig(DataConfig):
    length: int = 20_000
    period: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        check(1 <= self.period <= 10, f"data.period must be in [1, 10], got {self.period}")

    def load_text(self) -> tuple[str, str]:
        return count_text(self.length, self.period), "data=count"


@dataclass
class DelayedRecallDataConfig(DataConfig):
    length: int = 200_000
    delay: int = 10
    alphabet: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.delay >= 1, f"data.delay must be >= 1, got {self.delay}")
        check(2 <= self.alphabet <= 26, f"data.alphabet must be in [2, 26], got {self.alphabet}")

    def load_text(self) -> tuple[str, str]:
        text = delayed_recall_text(self.length, self.delay, self.alphabet, self.seed)
        return text, "data=delayed_recall"


@dataclass
class OptimConfig:
    _target_: str = "torch.optim.Adam"
    _partial_: bool = True  # the entry point binds the parameters: optimizer(model.parameters())
    lr: float = 2e-3
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        check(positive(self.lr), f"optim.lr must be a finite number > 0, got {self.lr}")
        check(
            math.isfinite(self.weight_decay) and self.weight_decay >= 0,
            f"optim.weight_decay must be a finite number >= 0, got {self.weight_decay}",
        )

    def build(
        self, params: Iterable[Any], extra: Mapping[str, Any] | None = None
    ) -> torch.optim.Optimizer:
        """The optimizer (``_target_``) over ``params``; ``extra``: arguments the schema does
        not list, added on the command line (``+optim.amsgrad=true``). Torch's complaint about
        an argument becomes one line naming the group."""
        node = {**asdict(self), **(extra or {})}
        try:
            return instantiate(node, _convert_="all")(params)  # type: ignore[no-any-return]
        except (TypeError, ValueError) as err:
            raise ConfigError(f"optim ({self._target_}): {first_line(err)}") from None


@dataclass
class AdamConfig(OptimConfig):
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8

    def __post_init__(self) -> None:
        super().__post_init__()
        check(len(self.betas) == 2, f"optim.betas must be two numbers, got {self.betas}")
        for i, beta in enumerate(self.betas):
            check(0 <= beta < 1, f"optim.betas[{i}] must be in [0, 1), got {beta}")
        # eps 0 divides 0 by 0 for a parameter that never had a gradient (an unseen character).
        check(positive(self.eps), f"optim.eps must be a finite number > 0, got {self.eps}")


@dataclass
class SGDConfig(OptimConfig):
    _target_: str = "torch.optim.SGD"
    lr: float = 0.5
    momentum: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 <= self.momentum < 1, f"optim.momentum must be in [0, 1), got {self.momentum}")


@dataclass
class RMSpropConfig(SGDConfig):
    _target_: str = "torch.optim.RMSprop"
    lr: float = 2e-3
    alpha: float = 0.99
    eps: float = 1e-8

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 <= self.alpha < 1, f"optim.alpha must be in [0, 1), got {self.alpha}")
        check(positive(self.eps), f"optim.eps must be a finite number > 0, got {self.eps}")


@dataclass
class BPTTConfig:
    loss_window: str = "k1"  # k1: losses of the last k1 steps | last: the last step only

    def __post_init__(self) -> None:  # the trainer takes it, but is built after the data
        check_loss_window(self.loss_window)


@dataclass
class FixedBPTTConfig(BPTTConfig):
    length: int = 64  # the nominal window: k1 = k2 = length unless set otherwise
    k1: int | None = None  # steps between updates (default: length)
    k2: int | None = None  # steps backpropagated (default: k1 + overlap)
    overlap: int = 0  # k2 - k1 when k2 is not set: sweeps sample k1 and overlap, so k2 >= k1

    def __post_init__(self) -> None:  # how the keys make k1 and k2 (FixedSchedule checks those)
        super().__post_init__()
        check(self.length >= 1, f"bptt.length must be >= 1, got {self.length}")
        check(self.overlap >= 0, f"bptt.overlap must be >= 0, got {self.overlap}")

    def windows(self) -> tuple[int, int]:
        k1 = self.length if self.k1 is None else self.k1
        return k1, k1 + self.overlap if self.k2 is None else self.k2

    def build(self, seed: int) -> Schedule:
        """The schedule; ``seed`` seeds a randomized one's generator (a fixed one draws none)."""
        k1, k2 = self.windows()
        return FixedSchedule(k1, k2)


@dataclass
class RandomBPTTConfig(BPTTConfig):
    length: int = 64  # the nominal window L
    p: float = 0.95  # probability of the full base length (else length / 2)
    sigma: float = 5.0
    min_len: int = 5
    max_len: int | None = None
    overlap: int = 0  # k2 = k1 + overlap
    scale_lr: bool = True  # multiply the update's lr by k1 / length

    def build(self, seed: int) -> Schedule:
        return RandomSchedule(
            length=self.length, p=self.p, sigma=self.sigma, min_len=self.min_len,
            max_len=self.max_len, overlap=self.overlap, scale_lr=self.scale_lr, seed=seed,
        )  # fmt: skip


@dataclass
class UniformBPTTConfig(BPTTConfig):
    min_len: int = 16
    max_len: int = 128
    overlap: int = 0
    scale_lr: bool = False

    def build(self, seed: int) -> Schedule:
        return UniformSchedule(
            min_len=self.min_len, max_len=self.max_len, overlap=self.overlap,
            scale_lr=self.scale_lr, seed=seed,
        )  # fmt: skip


@dataclass
class ClipConfig:
    # Clamp the backward error signal; null or 0: off (0 because Hydra's choice() has no null).
    error_clip: float | None = None

    def __post_init__(self) -> None:  # what "off" is, here; ErrorClip checks the rest
        check(
            self.error_clip is None or self.error_clip >= 0,
            f"clip.error_clip must be >= 0 or null, got {self.error_clip}",
        )

    def build(self) -> Clipping:
        error = ErrorClip(self.error_clip) if self.error_clip else None
        return Clipping(grad=NoClip(), error=error)


@dataclass
class NoClipConfig(ClipConfig):
    pass


@dataclass
class NormClipConfig(ClipConfig):
    max_norm: float = 1.0
    norm_type: float = 2.0

    def build(self) -> Clipping:
        return Clipping(NormClip(self.max_norm, self.norm_type), super().build().error)


@dataclass
class ValueClipConfig(ClipConfig):
    clip_value: float = 0.5

    def build(self) -> Clipping:
        return Clipping(ValueClip(self.clip_value), super().build().error)


@dataclass
class TrainerConfig:
    # Budget: the run ends at the first limit reached (null: no such limit).
    max_tokens: int | None = 1_000_000  # characters seen, summed over streams
    max_flops: float | None = None  # training compute, ~6 x n_eff per character and step
    max_seconds: float | None = None  # wall time (a safety net: the others are reproducible)
    # Evaluations (and the steps pruners compare) every this many tokens, or FLOPs: set one.
    eval_every_tokens: int | None = 100_000
    eval_every_flops: float | None = None
    eval_max_tokens: int | None = 32_768  # validation characters per evaluation; null: all
    eval_length: int = 128
    anneal: float = 0.0  # the lr decays linearly to 0 over this last fraction of the budget
    objective: str = "best"  # best | final validation loss is the run's return value
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # torch intra-op threads; null keeps torch's default
    divergence_factor: float | None = 3.0  # stop when the loss exceeds this x its best (null: off)
    divergence_warmup_tokens: int = 50_000
    grad_flow: bool = True  # ||dL_t/dh_{t-j}|| halfway and at the end (grad_flow.parquet)
    checkpoint: bool = True  # write checkpoint.pt at every evaluation
    resume: bool = False  # continue from checkpoint.pt in the run directory

    def __post_init__(self) -> None:  # Budget and Divergence check the rest, when built
        check(
            (self.eval_every_tokens is None) != (self.eval_every_flops is None),
            "set exactly one of trainer.eval_every_tokens and trainer.eval_every_flops, got "
            f"{self.eval_every_tokens} and {self.eval_every_flops}",
        )
        check_objective(self.objective)
        check(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            f"trainer.device must be auto, cpu or cuda, got {self.device!r}",
        )
        check(
            self.threads is None or self.threads >= 1,
            f"trainer.threads must be >= 1, got {self.threads}",
        )

    def build(self) -> tuple[Budget, Divergence]:
        """When the run stops and evaluates, and when its loss counts as climbing."""
        flops = self.eval_every_flops is not None
        every = self.eval_every_flops if flops else self.eval_every_tokens
        assert every is not None
        budget = Budget(
            eval_every=every,  # type: ignore[arg-type]  # a float from the config; Budget casts
            eval_max_tokens=self.eval_max_tokens,
            eval_length=self.eval_length,
            max_tokens=self.max_tokens,
            max_flops=self.max_flops,  # type: ignore[arg-type]
            max_seconds=self.max_seconds,
            unit="flops" if flops else "tokens",
            anneal=self.anneal,
        )
        return budget, Divergence(self.divergence_factor, self.divergence_warmup_tokens)


# Each data option's ``load_text()`` returns the corpus text and a name that error messages use.
DataSource = FileDataConfig | CountDataConfig | DelayedRecallDataConfig


def corpus_from_meta(meta: dict[str, Any]) -> Corpus:
    """The corpus a checkpoint was trained on, rebuilt from its ``meta["data"]``."""
    return data_from_meta(meta).build(window=1)


def data_from_meta(meta: dict[str, Any]) -> DataConfig:
    """The data settings a checkpoint recorded (``DataConfig.meta``), as their schema; a
    ConfigError when they are missing or of an unknown schema."""
    if "data" not in meta:
        raise ConfigError("checkpoint: it does not record its data settings (an older run)")
    fields = dict(meta["data"])
    kinds = {cls.__name__: cls for cls in SCHEMAS["data"].values()}
    kind = fields.pop("kind", None)
    if kind not in kinds:
        raise ConfigError(f"checkpoint: unknown data schema {kind!r}")
    try:
        return kinds[kind](**fields)  # type: ignore[no-any-return]
    except TypeError as err:  # settings of another version of the schema
        raise ConfigError(f"checkpoint: data settings: {err}") from None


SCHEMAS: dict[str, dict[str, type]] = {
    "model": {"model_schema": ModelConfig},
    "data": {
        "file_schema": FileDataConfig,
        "count_schema": CountDataConfig,
        "delayed_recall_schema": DelayedRecallDataConfig,
    },
    "optim": {
        "adam_schema": AdamConfig,
        "sgd_schema": SGDConfig,
        "rmsprop_schema": RMSpropConfig,
    },
    "bptt": {
        "fixed_schema": FixedBPTTConfig,
        "random_schema": RandomBPTTConfig,
        "uniform_schema": UniformBPTTConfig,
    },
    "clip": {
        "none_schema": NoClipConfig,
        "norm_schema": NormClipConfig,
        "value_schema": ValueClipConfig,
    },
    "trainer": {"trainer_schema": TrainerConfig},
}


def register() -> None:
    """Store every schema so ``conf/<group>/*.yaml`` can name it in its defaults list."""
    store = ConfigStore.instance()
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            store.store(group=group, name=name, node=node)
