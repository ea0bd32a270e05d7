"""Steps per second of one population of N members against one model alone, per model (the engine's step only).

    python scripts/benchmark_population_step.py                       # mlp and wavenet, N = 16
    python scripts/benchmark_population_step.py --models mlp rnn --members 4 16 64 --threads 2
    python scripts/benchmark_population_step.py --models mlp model.n_hidden=4 model.n_embd=2   # the host-work floor
    python scripts/benchmark_population_step.py --models wavenet --threads 2 --profile 100    # where a step goes

The population is stepped as the engine steps it inside the Trainer (population/run.py: PopulationLM's forward of
every member, folded or vmapped, one backward of the summed losses, per-member clipping, MembersOptimizer's step, one
lr per member as a sweep has); the single model by the solo engine's fast path (engine.StepEngine, what `python train.py` runs between Lightning batches). Both draw
the same minibatches and are timed over the same steps after a warm-up; the best of --repeats is kept. Extra
Hydra overrides apply to every member and the single model: a tiny width shows what a step costs with next to no
arithmetic (the per-step host work of each engine).
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from makemore_lab.configs import CONFIG_DIR
from makemore_lab.data.batches import MinibatchStream
from makemore_lab.errors import exit_on_user_error
from makemore_lab.losses import training_loss
from makemore_lab.population.member import Member
from makemore_lab.population.run import MembersOptimizer, Population


def member_cfg(model: str, lr: float, out: Path, extra: tuple[str, ...] = ()):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose(
            "train",
            overrides=[
                f"model={model}",
                f"optimizer.lr={lr}",
                f"paths.output_dir={out}",
                "trainer.accelerator=cpu",
                "logger=none",
                "threads=1",
                *extra,
            ],
        )


def population(model: str, size: int, out: Path, extra: tuple[str, ...] = ()) -> Population:
    base_lr = member_cfg(model, 1.0, out / "probe", extra).optimizer.lr
    members = [
        Member(member_cfg(model, base_lr * (0.5 + i / size), out / str(i), extra), out / str(i)) for i in range(size)
    ]
    for member in members:
        member.set_up(torch.device("cpu"))
    return Population(members, torch.device("cpu"))


def rate(run_steps, steps: int, warmup: int, repeats: int) -> float:
    run_steps(warmup)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        run_steps(steps)
        best = max(best, steps / (time.perf_counter() - start))
    return best


def minibatches(pop: Population, count: int):
    """(x, y) of steps 0 .. count - 1, (count, B, ...): the stream every member shares (one data seed)."""
    data = pop.members[0].datamodule
    x, y = data.train_examples[MinibatchStream(data.num_train_examples, data.batch_size, count).minibatches(0, count)]
    return x.view(count, data.batch_size, *x.shape[1:]), y.view(count, data.batch_size, *y.shape[1:])


def population_steps(pop: Population):
    """The population's steps as StepEngine._fast_steps makes them (loss, zero_grad, backward, clip, step, set_lr)."""
    module, optimizer = pop.module, MembersOptimizer(pop)
    clip = module.engine.plan.gradient_clip_val

    def run(count: int) -> None:
        xs, ys = minibatches(pop, count)
        for j in range(count):
            losses = module.net.losses(xs[j], ys[j], module.all_positions, shared=True)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            if clip:
                module.clip_gradients(optimizer, clip, module.engine.plan.gradient_clip_algorithm)
            optimizer.step()
            module.engine.set_lr(optimizer, j + 1)

    return run


def solo_steps(pop: Population):
    """One member alone, stepped as the solo engine steps it (loss, zero_grad, backward, step, set_lr)."""
    member = pop.members[0]
    net = type(member.net)(
        **{k: v for k, v in member.cfg.model.items() if k != "_target_"},
        vocab_size=member.datamodule.vocab_size,
        block_size=member.datamodule.block_size,
    )
    optimizer = member.module.optimizer_factory(params=net.parameters())
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])

    def run(count: int) -> None:
        xs, ys = minibatches(pop, count)
        for j in range(count):
            loss = training_loss(net, xs[j], ys[j], member.module.all_positions)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            member.module.engine.set_lr(optimizer, j + 1)

    return run


def print_profile(run_steps, steps: int, title: str, rows: int = 20) -> None:
    """torch.profiler's ops by self CPU time over `steps` population steps (times per step: divide by steps), then
    the same by op and input shapes (which matmul is which layer)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        run_steps(steps)
    print(f"\n{title}: torch.profiler over {steps} population steps (profiled: slower than the rates above)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=50))
    print(f"{title}, by input shapes:")
    print(
        prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=rows // 2, max_name_column_width=30, max_shapes_column_width=70
        ),
        flush=True,
    )


@exit_on_user_error  # a bad override: one line, as from train.py
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mlp", "wavenet"])
    parser.add_argument("--members", nargs="+", type=int, default=[16])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="STEPS",
        help="also run this many population steps under torch.profiler and print its top ops",
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every member and the single model")
    args = parser.parse_args()
    print(f"torch threads {args.threads}; steps/s, best of {args.repeats} x {args.steps} steps")
    print(
        "| model | members | one model steps/s | population steps/s | population step / one step | sweep time / one run |"
    )
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for size in args.members:
                pop = population(model, size, Path(tmp) / f"{model}{size}", tuple(args.overrides))
                torch.set_num_threads(args.threads)  # after set_up: threads=1 in the member configs
                solo = rate(solo_steps(pop), args.steps, args.warmup, args.repeats)
                together = rate(population_steps(pop), args.steps, args.warmup, args.repeats)
                # N solo runs take N / solo; the population takes 1 / together for all N.
                print(
                    f"| {model} | {size} | {solo:.0f} | {together:.0f} | {solo / together:.2f}x | "
                    f"{solo / together:.2f}x (vs {size}x one after another) |",
                    flush=True,
                )
                if args.profile:
                    print_profile(population_steps(pop), args.profile, f"{model}, {size} members")
                for member in pop.members:
                    member.release()


if __name__ == "__main__":
    main()
