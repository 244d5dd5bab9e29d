"""VAE-PyTorch: train and evaluate Mult-VAE / Mult-DAE (Liang et al. 2018) on MovieLens,
Protocol B of PROTOCOLS.md (top-N ranking under strong generalisation).

The experiment: command line, data, the network, the training loop with KL annealing,
early stopping on validation NDCG@100, the single test evaluation of the best weights and
the results. The run folder (config.json, metrics.jsonl, results.json, last.pt and best.pt),
--resume and CometML logging use runs.py; training over several processes (torchrun) uses
parallel.py. Usage: python VAE-PyTorch/main.py --help
"""
import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import data
import metrics
import model
import parallel
import runs
from runs import non_negative_float, non_negative_int, positive_float, positive_int

FOLDER = Path(__file__).resolve().parent
MODEL_NAMES = {"vae": "Mult-VAE", "dae": "Mult-DAE"}
SELECTION_METRIC = "ndcg@100"


class TrainingError(Exception):
    """Training cannot go on (a non-finite loss); the message says what is kept where."""


class Diverged(Exception):
    def __init__(self, epoch, step, value):
        super().__init__(f"loss {value} at epoch {epoch}")
        self.epoch, self.step, self.value = epoch, step, value


# ---------------------------------------------------------------- command line


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Mult-VAE / Mult-DAE (Liang et al. 2018) on MovieLens-1M (the default), "
                    "another MovieLens set or your own ratings file: top-N ranking "
                    "under strong generalisation (PROTOCOLS.md, Protocol B).")
    parser.add_argument("--model", dest="variant", choices=("vae", "dae"), default="vae",
                        help="vae: Mult-VAE; dae: Mult-DAE (same network, no sampling, no KL)")
    runs.add_data_arguments(parser, FOLDER.name, data.default_data_dir())
    parser.add_argument("--seed", type=non_negative_int, default=98765,
                        help="seed of the split, the initial weights and every epoch's noise")
    parser.add_argument("--epochs", type=positive_int, default=200)
    parser.add_argument("--batch-size", type=positive_int, default=100,
                        help="users per update; under torchrun the global batch: each "
                             "of N processes takes about batch-size/N of them")
    parser.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--weight-decay", type=non_negative_float, default=0.0,
                        help="L2 weight decay of Adam")
    parser.add_argument("--hidden", type=positive_int, default=600, help="hidden layer width")
    parser.add_argument("--latent", type=positive_int, default=200, help="code size")
    parser.add_argument("--dropout", type=runs.dropout_rate, default=0.5,
                        help="dropout rate on the normalised input row")
    parser.add_argument("--anneal-cap", type=non_negative_float, default=0.2,
                        help="largest KL weight beta (--anneal-mode cap)")
    parser.add_argument("--total-anneal-steps", type=non_negative_int,
                        help="beta = min(cap, update / this); default: the number of updates "
                             "of the whole run (epochs x batches per epoch); 0: beta = cap "
                             "from the start")
    parser.add_argument("--anneal-mode", choices=("cap", "best"), default="cap",
                        help="cap: anneal up to --anneal-cap and stay there; best: the "
                             "paper's alternative, anneal towards 1 and keep the weights and "
                             "beta of the best validation NDCG@100")
    parser.add_argument("--patience", type=positive_int, default=20,
                        help="stop after this many evaluations without a better validation "
                             "NDCG@100")
    parser.add_argument("--eval-every", type=positive_int, default=1,
                        help="evaluate (and checkpoint) every this many epochs")
    runs.add_top_n_arguments(parser, metrics.DEFAULT_KS)
    runs.add_run_arguments(parser)
    return runs.parse_with_resume(parser, argv)


def pick_device(choice):
    if choice == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda was given but no CUDA device is available")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


# ---------------------------------------------------------------- training


def anneal_settings(args, n_train_users):
    """(cap, total_anneal_steps): the default total is the whole run's number of updates."""
    cap = 1.0 if args.anneal_mode == "best" else args.anneal_cap
    total = args.total_anneal_steps
    if total is None:
        total = default_anneal_steps(n_train_users, args.batch_size, args.epochs)
    return cap, total


def default_anneal_steps(n_train_users, batch_size, epochs):
    """Updates of a whole run: beta = update / this reaches a cap c after c of the run."""
    return epochs * math.ceil(n_train_users / batch_size)


def epoch_generators(seed, epoch, device, noise_seed=None):
    """A NumPy RandomState (shuffling) and a torch Generator (noise) for one epoch alone;
    noise_seed (default seed): the noise of another process's shard under torchrun."""
    numpy_seed, torch_seed = np.random.SeedSequence([seed, epoch]).generate_state(2)
    if noise_seed is not None and noise_seed != seed:
        torch_seed = np.random.SeedSequence([noise_seed, epoch]).generate_state(2)[1]
    generator = torch.Generator(device=device)
    generator.manual_seed(int(torch_seed))
    return np.random.RandomState(numpy_seed), generator


def train_epoch(net, optimizer, train, epoch, step, args, anneal, context):
    """One pass over the training users in a shuffled order; returns (mean loss, step, beta).
    Under torchrun every process draws the same order and takes its shard of each batch."""
    net.train()
    device = context.device
    shuffler, generator = epoch_generators(args.seed, epoch, device,
                                           parallel.rank_seed(args.seed, context))
    order = shuffler.permutation(train.shape[0])
    starts = range(0, len(order), args.batch_size)
    total, beta = 0.0, 0.0
    bar = tqdm(starts, desc=f"epoch {epoch}", leave=False,
               disable=args.quiet or not context.main)
    for batch, start in enumerate(bar, start=1):
        users = order[start:start + args.batch_size]
        mine = parallel.shard(users, context)
        beta = model.anneal_beta(step, anneal[1], anneal[0]) if net.variational else 0.0
        optimizer.zero_grad()
        loss = torch.zeros(())
        if len(mine):
            x = model.sparse_rows(train[mine], device)
            logits, mu, logvar = net(x, generator)
            neg_ll, kl = model.loss_terms(logits, x, mu, logvar)
            loss = (neg_ll + beta * kl) * parallel.share(len(mine), len(users))
            loss.backward()
        value, = parallel.reduce_gradients(list(net.parameters()), context, [loss.item()])
        if not math.isfinite(value):
            raise Diverged(epoch, step, value)
        optimizer.step()
        step += 1
        total += value
        bar.set_postfix(loss=f"{total / batch:.2f}")
    return total / len(starts), step, beta


@torch.no_grad()
def evaluate(net, held_out, ks, batch_size, device, per_user_csv=None):
    """Metrics over all held-out users, scored in batches from their fold-in items only;
    with per_user_csv, each user's metrics are also written there."""
    net.eval()
    per_user = []
    for start in range(0, held_out.fold_in.shape[0], batch_size):
        fold_in = held_out.fold_in[start:start + batch_size]
        logits, _, _ = net(model.sparse_rows(fold_in, device))
        per_user.append(metrics.per_user_metrics(
            logits.cpu().numpy(), fold_in, held_out.target[start:start + batch_size], ks))
    if per_user_csv is not None:
        metrics.write_per_user(per_user_csv, held_out.user_ids, held_out.fold_in,
                               held_out.target, metrics.merge(per_user))
    return metrics.average(per_user)


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(path, obj):
    runs.write_atomic(path, lambda tmp: torch.save(obj, tmp))


def fresh_state():
    return {"epoch": 0, "step": 0, "best": None, "bad_evals": 0, "history": []}


def load_last(run_dir, net, optimizer, device):
    """The loop state of run_dir/last.pt (net and optimizer restored onto device, whatever
    device wrote it), or a fresh state when no evaluation had finished."""
    if not (run_dir / "last.pt").is_file():
        return fresh_state()
    checkpoint = torch.load(run_dir / "last.pt", map_location=device, weights_only=False)
    net.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    return checkpoint["state"]


def record_evaluation(run_dir, net, optimizer, state, line, item_ids, patience):
    """Update best/patience, write best.pt (if better), metrics.jsonl and last.pt."""
    score = line["validation"][SELECTION_METRIC]
    best = state["best"]
    if best is None or score > best["validation"][SELECTION_METRIC]:
        state["best"] = {key: line[key] for key in ("epoch", "beta", "validation")}
        state["bad_evals"] = 0
        save_checkpoint(run_dir / "best.pt", {"model": net.state_dict(), "item_ids": item_ids,
                                              **state["best"]})
    else:
        state["bad_evals"] += 1
    state["history"].append(line)
    runs.append_jsonl(run_dir / "metrics.jsonl", line)
    save_checkpoint(run_dir / "last.pt", {"model": net.state_dict(),
                                          "optimizer": optimizer.state_dict(), "state": state})
    return state["bad_evals"] >= patience


def diverged_message(error, run_dir, state):
    best = state["best"]
    kept = (f"best checkpoint (epoch {best['epoch']}) kept at {run_dir / 'best.pt'}"
            if best else "no evaluation had finished, so there is no best checkpoint")
    return (f"training loss became {error.value} at epoch {error.epoch} (update "
            f"{error.step + 1}); try a smaller --lr; {kept}")


# ---------------------------------------------------------------- run


def run(args):
    started = time.time()
    runs.comet_mode(args.comet)  # refuse --comet online without a key before writing
    context = parallel.start(pick_device(args.device))
    try:
        result = run_process(args, context, started)
    except BaseException:
        parallel.finish(context, completed=False)
        raise
    parallel.finish(context)
    return result


def run_process(args, context, started):
    """The run as one process sees it: rank 0 (or a plain run) writes the run folder,
    evaluates and tests; the other ranks of a torchrun train their shards, then stop."""
    device = context.device
    ks = sorted(set(args.ks) | {100})
    ratings_path = parallel.rank_0_first(context, lambda: data.find_ratings(
        args.data_dir, args.dataset, args.ratings_file, not args.no_download,
        quiet=args.quiet))
    ratings = data.load_ratings(ratings_path, args.format)
    split = data.split_top_n(ratings, seed=args.seed, min_rating=args.min_rating,
                             heldout_users=args.heldout_users, holdout=args.holdout)
    run_dir = runs.make_run_dir(args.out_dir, FOLDER) if context.main else args.out_dir
    if args.resume is not None:
        runs.check_same_data(run_dir, ratings.sha256, ratings_path)
        if args.total_anneal_steps is None:  # the schedule the run began with (--epochs may grow)
            args.total_anneal_steps = runs.saved_config(run_dir).get("total_anneal_steps_used")
    model_name = MODEL_NAMES[args.variant]
    anneal = anneal_settings(args, split.train.shape[0])
    config = {**runs.config_values(args), "resume": None, "model": model_name,
              "device_used": str(device), "anneal_cap_used": anneal[0],
              "total_anneal_steps_used": anneal[1],
              "n_train_users": len(split.train_user_ids), "n_items": split.n_items,
              "data_sha256": ratings.sha256, "processes": context.world}
    experiment = None
    if context.main:
        runs.write_json(run_dir / "config.json", config)
        experiment = runs.start_comet(args.comet, run_dir, config, runs.run_labels(
            model_name, FOLDER.name, "B", args.holdout, args.seed,
            runs.dataset_label(args)))

    torch.manual_seed(args.seed)
    net = model.MultVAE(split.n_items, args.hidden, args.latent, args.dropout,
                        variational=args.variant == "vae").to(device)
    parallel.broadcast_weights(net, context)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                 fused=True)   # one kernel per step: the CPU step is ~4x faster
    # under torchrun every process loads last.pt: weights and optimiser state stay equal
    state = fresh_state() if args.resume is None else load_last(run_dir, net, optimizer, device)
    if context.main:
        if args.resume is not None:
            print(runs.starting_message(run_dir, state["epoch"]))
        runs.rewrite_jsonl(run_dir / "metrics.jsonl", state["history"])

    try:
        train_loop(args, net, optimizer, split, state, anneal, ks, context, run_dir,
                   experiment)
    except Diverged as error:
        if not context.main:
            raise TrainingError(str(error)) from None
        runs.finish_comet(experiment, run_dir)
        raise TrainingError(diverged_message(error, run_dir, state)) from None
    if not context.main:
        return None

    best = state["best"]
    checkpoint = torch.load(run_dir / "best.pt", map_location=device, weights_only=False)
    net.load_state_dict(checkpoint["model"])
    test = evaluate(net, split.test, ks, args.batch_size, device,
                    run_dir / "test_per_user.csv")
    print(runs.summary_line(f"test (epoch {best['epoch']}, beta {best['beta']:.3f})", test))

    results = {"model": model_name, "folder": FOLDER.name, "protocol": "B",
               "holdout": args.holdout, "test": test, "validation": best["validation"],
               "best_epoch": best["epoch"],
               "selected": {"beta": best["beta"], "anneal_mode": args.anneal_mode,
                            "anneal_cap": anneal[0], "total_anneal_steps": anneal[1]},
               "wall_seconds": round(time.time() - started, 2),
               "peak_memory_mb": round(runs.peak_memory_mb(), 1), "seed": args.seed,
               "data_sha256": ratings.sha256, "device": str(device),
               "processes": context.world}
    runs.finish_run(experiment, run_dir, results, run_dir / "best.pt", args.comet_log_model)
    return results


def train_loop(args, net, optimizer, split, state, anneal, ks, context, run_dir, experiment):
    """Epochs from state['epoch'] + 1 on, evaluating every --eval-every and at the end;
    under torchrun rank 0 evaluates and the others learn from it whether to stop."""
    if state["best"] is not None and state["bad_evals"] >= args.patience:
        return
    for epoch in range(state["epoch"] + 1, args.epochs + 1):
        loss, state["step"], beta = train_epoch(net, optimizer, split.train, epoch,
                                                state["step"], args, anneal, context)
        state["epoch"] = epoch
        if epoch % args.eval_every and epoch != args.epochs:
            runs.log_epoch(experiment, epoch, {"train_loss": loss, "beta": beta})
            continue
        if parallel.broadcast(context.main and evaluate_epoch(
                args, net, optimizer, split, state, ks, context.device, run_dir, experiment,
                (epoch, loss, beta)), context):
            return


def evaluate_epoch(args, net, optimizer, split, state, ks, device, run_dir, experiment,
                   trained):
    """Validation, log and checkpoints after an epoch (rank 0); whether to stop early."""
    epoch, loss, beta = trained
    runs.log_epoch(experiment, epoch, {"train_loss": loss, "beta": beta})
    validation = evaluate(net, split.validation, ks, args.batch_size, device)
    runs.log_epoch(experiment, epoch, {}, validation)
    tqdm.write(runs.summary_line(f"epoch {epoch} loss {loss:.2f} beta {beta:.3f} "
                                 f"validation", validation))
    line = {"epoch": epoch, "train_loss": loss, "beta": beta, "validation": validation}
    stop = record_evaluation(run_dir, net, optimizer, state, line, split.item_ids,
                             args.patience)
    if stop:
        tqdm.write(f"early stop: no better validation {SELECTION_METRIC} in "
                   f"{args.patience} evaluations")
    return stop


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except (data.DataError, TrainingError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
