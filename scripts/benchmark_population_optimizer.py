"""What a population's optimizer step costs: torch's optimizers over per-member param groups (each member's
Parameters views of its rows of the stacked weights) against the vectorised SGD step over the stacked tensors.

    OMP_NUM_THREADS=1 python scripts/benchmark_population_optimizer.py --members 16

The shapes are the lecture MLP's (27 characters, embedding 10, context 3, 200 hidden). Prints the median of
--rounds rounds, in microseconds a step (docs/architecture.md quotes it).
"""

import argparse
import statistics
import time

import torch

SHAPES = [(27, 10), (30, 200), (200,), (200, 27), (27,)]


def per_step_us(step, steps: int, rounds: int) -> float:
    for _ in range(steps // 10):
        step()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - start) / steps * 1e6)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    n = args.members
    stacked = [torch.randn(n, *shape, requires_grad=True) for shape in SHAPES]
    for tensor in stacked:
        tensor.grad = torch.randn_like(tensor)
    members = [[torch.nn.Parameter(t.detach()[i]) for t in stacked] for i in range(n)]

    def bind_grads():  # each member's Parameters pointed at its rows of the stacked gradients
        for i, params in enumerate(members):
            for param, tensor in zip(params, stacked):
                param.grad = tensor.grad[i]

    bind_grads()
    lrs = torch.linspace(0.01, 1.0, n)
    minus_lr = -lrs

    def vectorised_sgd():
        for tensor in stacked:
            tensor.detach().addcmul_(tensor.grad, minus_lr.view(-1, *[1] * (tensor.dim() - 1)))

    groups = lambda: [{"params": members[i], "lr": float(lrs[i])} for i in range(n)]
    sgd = torch.optim.SGD(groups(), lr=0.1)
    adam = torch.optim.Adam(groups(), lr=0.1)
    adams = [torch.optim.Adam(members[i], lr=float(lrs[i])) for i in range(n)]
    rows = [
        ("vectorised SGD over the stacked tensors", vectorised_sgd, args.steps),
        (f"torch SGD, {n} param groups", sgd.step, args.steps),
        ("pointing the members' Parameters at their gradient rows", bind_grads, args.steps),
        (f"torch Adam, {n} param groups", adam.step, args.steps // 10),
        (f"torch Adam, {n} optimizers", lambda: [a.step() for a in adams], args.steps // 10),
    ]
    print(f"{n} members, threads {torch.get_num_threads()}, median of {args.rounds} rounds")
    for name, step, steps in rows:
        print(f"{per_step_us(step, steps, args.rounds):9.1f} us  {name}")


if __name__ == "__main__":
    main()
