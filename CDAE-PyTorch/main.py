"""CDAE-PyTorch: train and evaluate the Collaborative Denoising Auto-Encoder (Wu et al.,
WSDM 2016) on MovieLens, Protocol B of PROTOCOLS.md (top-N ranking under strong
generalisation).

The experiment: command line, data, the network, the training loop with early stopping on
validation NDCG@100, the fold-in of held-out users' vectors, the single test evaluation
and the results. The run folder (config.json, metrics.jsonl, results.json, checkpoints),
--resume and CometML logging use runs.py; training over several processes (torchrun) uses
parallel.py. Usage: python CDAE-PyTorch/main.py --help
"""
import argparse
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import data
import metrics
import model
import parallel
import runs
from runs import non_negative_float, non_negative_int, positive_float, positive_int

FOLDER = Path(__file__).resolve().parent
SELECTION_METRIC = "ndcg@100"
EVAL_BATCH_USERS = 1000  # held-out users folded in and scored at once (dense rows)


class Diverged(Exception):
    """The training loss became NaN or infinite."""


# ---------------------------------------------------------------- command line


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="CDAE (Wu et al. 2016) on MovieLens-1M (the default), "
                    "another MovieLens set or your own ratings file: top-N ranking under strong "
                    "generalisation (PROTOCOLS.md, Protocol B).")
    runs.add_data_arguments(parser, FOLDER.name, data.default_data_dir())
    parser.add_argument("--seed", type=non_negative_int, default=98765,
                        help="seed of the split, the initial weights and the training noise")
    parser.add_argument("--epochs", type=positive_int, default=80,
                        help="maximum number of training epochs")
    parser.add_argument("--batch-size", type=positive_int, default=256,
                        help="training users per batch; under torchrun the global batch: "
                             "each of N processes takes about batch-size/N of them")
    parser.add_argument("--lr", type=positive_float, default=3e-3, help="learning rate")
    parser.add_argument("--optimizer", choices=("adam", "adagrad"), default="adam")
    parser.add_argument("--user-optimizer", choices=("adam", "sparse-adam"), default="adam",
                        help="the user vectors' optimiser: adam, dense, with the rest "
                             "(--optimizer); sparse-adam: sparse gradients and "
                             "torch.optim.SparseAdam at --lr, so the vectors of users "
                             "outside a batch stay as they are (no effect with "
                             "--no-user-node)")
    parser.add_argument("--hidden", type=positive_int, default=200, help="hidden units")
    parser.add_argument("--dropout", type=runs.dropout_rate, default=0.5,
                        help="corruption level q: share of input entries zeroed")
    parser.add_argument("--loss", choices=("sampled", "full"), default="sampled",
                        help="BCE on observed items plus sampled negatives, or on all items")
    parser.add_argument("--negatives", type=positive_float, default=5.0,
                        help="sampled unobserved items per observed item (--loss sampled)")
    parser.add_argument("--l2", type=non_negative_float, default=3e-3,
                        help="L2 weight lambda on W, W' and the user vectors")
    parser.add_argument("--no-user-node", action="store_true",
                        help="no per-user input vector: the plain denoising autoencoder")
    parser.add_argument("--fold-in-steps", type=non_negative_int, default=20,
                        help="Adam steps that fit a held-out user's vector, network frozen")
    parser.add_argument("--fold-in-lr", type=positive_float, default=0.1,
                        help="learning rate of the fold-in steps")
    parser.add_argument("--patience", type=positive_int, default=5,
                        help="stop after this many evaluations without a better "
                             "validation NDCG@100")
    parser.add_argument("--eval-every", type=positive_int, default=2,
                        help="evaluate on the validation users every this many epochs")
    runs.add_top_n_arguments(parser, metrics.DEFAULT_KS)
    parser.add_argument("--threads", type=positive_int,
                        help="CPU threads of torch (default: torch's own, all cores or "
                             "OMP_NUM_THREADS); 1 is faster on a machine busy with other "
                             "jobs, where two threads ran ten times slower")
    runs.add_run_arguments(parser)
    return runs.parse_with_resume(parser, argv)


def pick_device(choice):
    if choice == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda was given but no CUDA device is available")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def model_name(args):
    return "DAE" if args.no_user_node else "CDAE"


# ---------------------------------------------------------------- training


def epoch_seed(seed, epoch):
    """Each epoch's shuffling and noise come from (seed, epoch) alone, so a resumed run
    draws exactly what an uninterrupted one would."""
    return seed * 1_000_003 + epoch


class SplitOptimiser:
    """--user-optimizer sparse-adam: the network's parameters under `network` (Adam or
    Adagrad), the sparse user vectors under SparseAdam, driven as one optimiser. Its state
    dict holds both states, so last.pt and --resume carry both."""

    def __init__(self, network, users):
        self.network, self.users = network, users

    @property
    def param_groups(self):
        return self.network.param_groups + self.users.param_groups

    def zero_grad(self):
        self.network.zero_grad()
        self.users.zero_grad()

    def step(self):
        self.network.step()
        self.users.step()

    def state_dict(self):
        return {"network": self.network.state_dict(), "users": self.users.state_dict()}

    def load_state_dict(self, state):
        self.network.load_state_dict(state["network"])
        self.users.load_state_dict(state["users"])


def build(args, n_items, n_users, device):
    torch.manual_seed(args.seed)
    sparse = args.user_optimizer == "sparse-adam" and not args.no_user_node
    net = model.CDAE(n_items, n_users, args.hidden, not args.no_user_node,
                     sparse_users=sparse).to(device)
    optimiser_class = torch.optim.Adam if args.optimizer == "adam" else torch.optim.Adagrad
    if not sparse:  # one optimiser over every parameter, the user vectors' dense rows too
        return net, optimiser_class(net.parameters(), lr=args.lr)
    users = net.user_vectors.weight
    network = [p for p in net.parameters() if p is not users]
    return net, SplitOptimiser(optimiser_class(network, lr=args.lr),
                               torch.optim.SparseAdam([users], lr=args.lr))


def train_epoch(net, optimiser, train, args, epoch, context):
    """One pass over the training users in a seeded order; returns the mean batch loss.
    Under torchrun every process draws the same order and takes its shard of each batch;
    the user vectors' gradient is summed over the batch's rows only."""
    device = context.device
    order = torch.randperm(train.shape[0],
                           generator=torch.Generator().manual_seed(epoch_seed(args.seed, epoch)))
    noise = torch.Generator(device=device).manual_seed(
        epoch_seed(parallel.rank_seed(args.seed, context), epoch))
    negatives = args.negatives if args.loss == "sampled" else None
    net.train()
    params = list(net.parameters())
    sparse = isinstance(optimiser, SplitOptimiser)
    total, n_batches = 0.0, 0
    batches = tqdm(range(0, len(order), args.batch_size), desc=f"epoch {epoch}",
                   disable=args.quiet or not context.main, leave=False)
    for start in batches:
        users = order[start:start + args.batch_size]
        mine = parallel.shard(users, context)
        optimiser.zero_grad()
        loss = torch.zeros(())
        if len(mine):  # the last batch may leave a process without users
            share = parallel.share(len(mine), len(users))
            reconstruction, user_l2 = batch_losses(net, train, mine, args, negatives, noise,
                                                   context.device)
            # the network's L2 term: each of N processes adds 1/N of it
            loss = reconstruction * share + 0.5 * args.l2 * net.network_l2() / context.world
            if user_l2 is not None:
                loss = loss + 0.5 * args.l2 * user_l2 * share
            loss.backward()
        rows = {} if net.user_vectors is None else {net.user_vectors.weight: users.to(device)}
        value, = parallel.reduce_gradients(params, context, [loss.item()], rows, sparse)
        if not math.isfinite(value):
            raise Diverged(f"training loss became {value} at epoch {epoch}")
        optimiser.step()
        total, n_batches = total + value, n_batches + 1
        batches.set_postfix(loss=f"{total / n_batches:.3f}")
    return total / n_batches


def batch_losses(net, train, users, args, negatives, noise, device):
    """Means over the users of the reconstruction loss and of their vectors' squared norm
    (None without a user node)."""
    x = torch.from_numpy(train[users.numpy()].toarray()).to(device)
    mask = model.loss_mask(x, negatives, noise)
    user_vectors = None if net.user_vectors is None else net.user_vectors(users.to(device))
    logits = net(model.corrupt(x, args.dropout, noise), user_vectors)
    reconstruction = model.reconstruction_loss(logits, x, mask).mean()
    if user_vectors is None:
        return reconstruction, None
    return reconstruction, user_vectors.square().sum(dim=1).mean()


def evaluate(net, held_out, args, ks, device, per_user_csv=None):
    """Fit the held-out users' vectors on their fold-in items, then rank all items,
    EVAL_BATCH_USERS users at a time (only a batch's rows are dense); with per_user_csv,
    each user's metrics are also written there."""
    net.eval()
    negatives = args.negatives if args.loss == "sampled" else None
    n_users = held_out.fold_in.shape[0]
    per_user = []
    for start in range(0, n_users, EVAL_BATCH_USERS):
        fold_in = held_out.fold_in[start:start + EVAL_BATCH_USERS]
        x = torch.from_numpy(fold_in.toarray()).to(device)
        vectors = model.fold_in(net, x, args.fold_in_steps, args.fold_in_lr, args.l2,
                                negatives, n_users)
        item_scores = model.scores(net, x, vectors).cpu().numpy()
        per_user.append(metrics.per_user_metrics(
            item_scores, fold_in, held_out.target[start:start + EVAL_BATCH_USERS], ks))
    if per_user_csv is not None:
        metrics.write_per_user(per_user_csv, held_out.user_ids, held_out.fold_in,
                               held_out.target, metrics.merge(per_user))
    return metrics.average(per_user)


def fresh_state():
    return {"epoch": 0, "best_epoch": None, "best_validation": None, "bad_evaluations": 0,
            "history": []}


def save_checkpoint(path, net, optimiser, state):
    checkpoint = {**state, "model": net.state_dict(), "optimizer": optimiser.state_dict()}
    runs.write_atomic(path, lambda tmp: torch.save(checkpoint, tmp))


def load_checkpoint(run_dir, net, optimiser, device, lr):
    """Training state of run_dir/last.pt (weights and optimiser restored onto device,
    whatever device wrote it), or a fresh one when no evaluation had finished."""
    path = run_dir / "last.pt"
    if not path.is_file():
        return fresh_state()
    checkpoint = torch.load(path, map_location=device, weights_only=False)
    net.load_state_dict(checkpoint.pop("model"))
    optimiser.load_state_dict(checkpoint.pop("optimizer"))
    for group in optimiser.param_groups:  # config.json's learning rate is the one in force
        group["lr"] = lr
    return checkpoint


def train(net, optimiser, state, split, args, ks, run_dir, experiment, context):
    """Epochs with early stopping; checkpoints last.pt each evaluation and best.pt on a new
    best validation NDCG@100. Returns the final state. Under torchrun rank 0 evaluates and
    the others learn from it whether to stop."""
    stop = state["bad_evaluations"] >= args.patience
    while state["epoch"] < args.epochs and not stop:
        epoch = state["epoch"] + 1
        train_loss = train_epoch(net, optimiser, split.train, args, epoch, context)
        runs.log_epoch(experiment, epoch, {"train_loss": train_loss})
        state["epoch"] = epoch
        if epoch % args.eval_every and epoch != args.epochs:
            continue
        stop = parallel.broadcast(context.main and evaluate_epoch(
            net, optimiser, state, split, args, ks, run_dir, experiment, context.device,
            (epoch, train_loss)), context)
    return state


def evaluate_epoch(net, optimiser, state, split, args, ks, run_dir, experiment, device,
                   trained):
    """Validation, log and checkpoints after an epoch (rank 0); whether to stop early."""
    epoch, train_loss = trained
    validation = evaluate(net, split.validation, args, ks, device)
    record = {"epoch": epoch, "train_loss": train_loss, "validation": validation}
    state["history"].append(record)
    runs.append_jsonl(run_dir / "metrics.jsonl", record)
    runs.log_epoch(experiment, epoch, {}, validation)
    best = state["best_validation"]
    if best is None or validation[SELECTION_METRIC] > best[SELECTION_METRIC]:
        state.update(best_epoch=epoch, best_validation=validation, bad_evaluations=0)
        save_checkpoint(run_dir / "best.pt", net, optimiser, state)
    else:
        state["bad_evaluations"] += 1
    save_checkpoint(run_dir / "last.pt", net, optimiser, state)
    tqdm.write(runs.summary_line(f"epoch {epoch} loss {train_loss:.4f} validation", validation))
    return state["bad_evaluations"] >= args.patience


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
    if args.threads is not None:
        torch.set_num_threads(args.threads)
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
    config = {**runs.config_values(args), "resume": None, "model": model_name(args),
              "device_used": str(device), "n_train_users": len(split.train_user_ids),
              "n_items": split.n_items, "data_sha256": ratings.sha256,
              "processes": context.world}
    experiment = None
    if context.main:
        runs.write_json(run_dir / "config.json", config)
        experiment = runs.start_comet(args.comet, run_dir, config, runs.run_labels(
            model_name(args), FOLDER.name, "B", args.holdout, args.seed,
            runs.dataset_label(args)))

    net, optimiser = build(args, split.n_items, len(split.train_user_ids), device)
    parallel.broadcast_weights(net, context)
    state = fresh_state()
    if args.resume is not None:  # under torchrun every process loads last.pt
        state = load_checkpoint(run_dir, net, optimiser, device, args.lr)
    if context.main:
        if args.resume is not None:
            print(runs.starting_message(run_dir, state["epoch"]))
        # a resumed run repeats the epochs after its last checkpoint: drop their old lines
        runs.rewrite_jsonl(run_dir / "metrics.jsonl", state["history"])
    try:
        state = train(net, optimiser, state, split, args, ks, run_dir, experiment, context)
    except Diverged as error:
        if not context.main:
            sys.exit(f"error: {error}")
        kept = (f"best checkpoint (epoch {state['best_epoch']}) kept at {run_dir / 'best.pt'}"
                if state["best_epoch"] is not None else "no checkpoint had been written yet")
        runs.finish_comet(experiment, run_dir)
        sys.exit(f"error: {error}; {kept}")
    if not context.main:
        return None

    best = torch.load(run_dir / "best.pt", map_location=device, weights_only=False)
    net.load_state_dict(best["model"])
    test = evaluate(net, split.test, args, ks, device, run_dir / "test_per_user.csv")
    print(runs.summary_line(f"test (epoch {state['best_epoch']})", test))

    results = {"model": model_name(args), "folder": FOLDER.name, "protocol": "B",
               "holdout": args.holdout, "test": test, "validation": state["best_validation"],
               "best_epoch": state["best_epoch"], "selected": {},
               "epochs_run": state["epoch"],
               "wall_seconds": round(time.time() - started, 2),
               "peak_memory_mb": round(runs.peak_memory_mb(), 1), "seed": args.seed,
               "data_sha256": ratings.sha256, "device": str(device),
               "processes": context.world}
    runs.finish_run(experiment, run_dir, results, run_dir / "best.pt", args.comet_log_model)
    return results


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except data.DataError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
