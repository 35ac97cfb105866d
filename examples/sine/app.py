"""Any Hydra app, swept with pruning: a small GRU learns to continue a noisy sine wave.

    python examples/sine/app.py                  # one run
    python examples/sine/app.py -m               # the sweep of conf/config.yaml (Optuna, pruned)

Nothing here is specific to this project but the two marked lines of the trial contract
(``tbptt/contract.py``): report the validation loss at each evaluation, and stop when the
sweeper says so. The optional ``checked_by`` lets the sweeper reject a bad search space before
any trial runs. The rest is a plain PyTorch loop.
"""

from __future__ import annotations

import math

import hydra
import torch
from omegaconf import DictConfig

from tbptt import contract  # (1) the trial contract


def check(cfg: DictConfig) -> None:
    """The app's own config check: the sweeper runs it on every config it would try."""
    if not cfg.lr > 0:
        raise ValueError(f"lr must be > 0, got {cfg.lr}")
    if cfg.hidden < 1:
        raise ValueError(f"hidden must be >= 1, got {cfg.hidden}")


def waves(n: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy sine waves of random phase and frequency: inputs, and next values."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length + 1, dtype=torch.float32)  # (T+1,)
    phase = torch.rand(n, 1, generator=g) * 2 * math.pi  # (N, 1)
    freq = 0.1 + 0.2 * torch.rand(n, 1, generator=g)
    x = torch.sin(freq * t + phase) + 0.05 * torch.randn(n, length + 1, generator=g)  # (N, T+1)
    return x[:, :-1, None], x[:, 1:, None]  # (N, T, 1) each


class Net(torch.nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.rnn = torch.nn.GRU(1, hidden, batch_first=True)
        self.out = torch.nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(x)  # (N, T, H)
        return self.out(h)  # (N, T, 1)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
@contract.checked_by(check)
def main(cfg: DictConfig) -> float:
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(1)
    x, y = waves(64, 50, cfg.seed)
    vx, vy = waves(32, 50, cfg.seed + 1)
    model = Net(cfg.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    best = math.inf
    for step in range(1, cfg.steps + 1):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % cfg.eval_every == 0:
            with torch.no_grad():
                val = torch.nn.functional.mse_loss(model(vx), vy).item()
            best = min(best, val)
            if contract.report(val, step):  # (2) pruned by the sweeper: stop training
                break
    return best


if __name__ == "__main__":
    main()
