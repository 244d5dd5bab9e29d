"""SVAE-PyTorch: train and evaluate the sequential VAE (Sachdeva et al. 2019) on
MovieLens, Protocol B of PROTOCOLS.md (top-N ranking under strong generalisation).

The experiment: command line, data, the network, the batched training loop (users of
similar length batched together, padded, truncated back-propagation through time), KL
annealing, early stopping on validation NDCG@100, the single test evaluation of the best
weights and the results. The run folder (config.json, metrics.jsonl, results.json, last.pt
and best.pt), --resume and CometML logging use runs.py; training over several processes
(torchrun) uses parallel.py. Usage: python SVAE-PyTorch/main.py --help
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
MODEL_NAME = "SVAE"
SELECTION_METRIC = "ndcg@100"
DEFAULT_EPOCHS = 12
DEFAULT_ANNEAL_CAP = {"temporal": 0.05, "random": 1.0}  # chosen per hold-out (README.md)
EVAL_BATCH_USERS = 256
EVAL_CHUNK_USERS = 2048  # held-out users whose dense scores are held at once


class TrainingError(Exception):
    """Training cannot go on (a non-finite loss); the message says what is kept where."""


class Diverged(Exception):
    def __init__(self, epoch, step, value):
        super().__init__(f"loss {value} at epoch {epoch}")
        self.epoch, self.step, self.value = epoch, step, value


# ---------------------------------------------------------------- command line


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="SVAE, the sequential VAE (Sachdeva et al. 2019), on MovieLens-1M "
                    "(the default), another MovieLens set or your own ratings file: "
                    "top-N ranking under strong generalisation (PROTOCOLS.md, Protocol B).")
    runs.add_data_arguments(parser, FOLDER.name, data.default_data_dir())
    parser.add_argument("--seed", type=non_negative_int, default=98765,
                        help="seed of the split, the initial weights and every epoch's noise")
    parser.add_argument("--epochs", type=positive_int, default=DEFAULT_EPOCHS,
                        help="most epochs (default %(default)s); with --resume, a new total "
                             "for the resumed run")
    parser.add_argument("--batch-size", type=positive_int, default=16,
                        help="users per update (users of similar length are batched "
                             "together); under torchrun the global batch: each of N "
                             "processes takes about batch-size/N of them")
    parser.add_argument("--lr", type=positive_float, default=2e-3,
                        help="Adam learning rate of the first epoch")
    parser.add_argument("--lr-decay", type=runs.decay_factor, default=0.85,
                        help="the learning rate of epoch e is lr * lr_decay ** (e - 1) "
                             "(1: constant)")
    parser.add_argument("--weight-decay", type=non_negative_float, default=1e-4,
                        help="L2 weight decay of Adam")
    parser.add_argument("--embed-dim", type=positive_int, default=256, help="item embedding size")
    parser.add_argument("--rnn-dim", type=positive_int, default=200, help="GRU state size")
    parser.add_argument("--hidden-dim", type=positive_int, default=150,
                        help="hidden layer of the encoder and of the decoder MLP")
    parser.add_argument("--latent-dim", type=positive_int, default=64, help="latent z size")
    parser.add_argument("--dropout", type=runs.dropout_rate, default=0.0,
                        help="dropout on the item embeddings and on the GRU outputs")
    parser.add_argument("--next-k", type=positive_int, default=4,
                        help="each step predicts the user's next k items")
    parser.add_argument("--anneal-cap", type=non_negative_float,
                        help="largest KL weight beta (default: 0.05 with --holdout temporal, "
                             "1.0 with --holdout random, each chosen on validation NDCG@100)")
    parser.add_argument("--anneal-epochs", type=non_negative_float, default=5.0,
                        help="beta grows linearly from 0 to the cap over this many epochs "
                             "of updates (0: the cap from the start)")
    parser.add_argument("--bptt", type=positive_int, default=100,
                        help="truncated back-propagation: gradient flows through at most "
                             "this many steps; longer histories are processed in chunks "
                             "with the GRU state carried over")
    parser.add_argument("--loss-steps", type=non_negative_int, default=16,
                        help="per user and epoch, the loss counts at most this many of the "
                             "user's steps, drawn at random (an unbiased estimate of the "
                             "user's mean step loss at a fraction of the softmax cost); "
                             "0: every step")
    parser.add_argument("--clip", type=non_negative_float, default=5.0,
                        help="clip the gradient norm of each update at this (0: off)")
    parser.add_argument("--score", choices=("last", "mean"), default="last",
                        help="rank by the last step's distribution (the paper's), or by "
                             "the mean of every fold-in step's distribution")
    parser.add_argument("--patience", type=positive_int, default=3,
                        help="stop after this many evaluations without a better validation "
                             "NDCG@100")
    parser.add_argument("--eval-every", type=positive_int, default=1,
                        help="evaluate (and checkpoint) every this many epochs")
    runs.add_top_n_arguments(parser, metrics.DEFAULT_KS)
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="CPU threads of PyTorch (default 1: the GRU's small per-step "
                             "products gain nothing from more, and lose much on a busy "
                             "machine)")
    runs.add_run_arguments(parser)
    args = runs.parse_with_resume(parser, argv)
    if args.resume is not None and "lr_decay" not in runs.saved_config(args.resume):
        args.lr_decay = 1.0  # a run made before --lr-decay existed: a constant rate
    if args.anneal_cap is None:
        args.anneal_cap = DEFAULT_ANNEAL_CAP[args.holdout]
    return args


def pick_device(choice):
    if choice == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda was given but no CUDA device is available")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


# ---------------------------------------------------------------- batches


def epoch_generators(seed, epoch, noise_seed=None):
    """A NumPy RandomState (batching) and a torch seed (noise, dropout) for one epoch alone;
    noise_seed (default seed): the noise of another process's shard under torchrun."""
    numpy_seed, torch_seed = np.random.SeedSequence([seed, epoch]).generate_state(2)
    if noise_seed is not None and noise_seed != seed:
        torch_seed = np.random.SeedSequence([noise_seed, epoch]).generate_state(2)[1]
    return np.random.RandomState(numpy_seed), int(torch_seed)


def length_batches(lengths, batch_size, shuffler):
    """Batches of users of similar length in a random order, so that padding stays small.

    Users are sorted by their length scaled by a random factor in [1, 1.25), cut into
    batches of batch_size, and the batches are shuffled: batches differ from epoch to epoch.
    """
    key = lengths * (1.0 + 0.25 * shuffler.rand(len(lengths)))
    order = np.argsort(key, kind="stable")
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    return [batches[i] for i in shuffler.permutation(len(batches))]


def to_tensors(seqs, n_items, next_k, device, max_steps=0, shuffler=None):
    """Padded items, next-k targets and weights (zero outside the counted steps), and each
    user's number of counted steps."""
    padded, lengths = data.pad_sequences(seqs, n_items)
    targets, weights = data.next_k_targets(padded, lengths, next_k)
    counted = data.loss_step_mask(lengths, padded.shape[1], max_steps, shuffler)
    weights *= counted[:, :, None]
    return (torch.from_numpy(padded).to(device), torch.from_numpy(targets).to(device),
            torch.from_numpy(weights).to(device),
            torch.from_numpy(counted.sum(axis=1)).to(device))


def set_epoch_lr(optimizer, args, epoch):
    """The learning rate of an epoch follows from the epoch alone (so --resume is exact)."""
    for group in optimizer.param_groups:
        group["lr"] = args.lr * args.lr_decay ** (epoch - 1)


def linear_beta(step, cap, total_steps):
    """KL weight after `step` updates: rises linearly from 0 to cap over total_steps."""
    return cap if total_steps <= 0 else min(cap, cap * step / total_steps)


# ---------------------------------------------------------------- training


def train_epoch(net, optimizer, seqs, epoch, step, args, n_items, context):
    """One pass over the training users; returns ([mean loss, NLL, KL per user], step, beta).
    Under torchrun every process forms the same batches and takes its shard of each."""
    net.train()
    set_epoch_lr(optimizer, args, epoch)
    shuffler, torch_seed = epoch_generators(args.seed, epoch,
                                            parallel.rank_seed(args.seed, context))
    torch.manual_seed(torch_seed)
    lengths = np.array([len(seq) for seq in seqs])
    batches = length_batches(lengths, args.batch_size, shuffler)
    total_steps = round(args.anneal_epochs * len(batches))
    totals, n_users, beta = np.zeros(3), 0, 0.0
    params = list(net.parameters())
    bar = tqdm(batches, desc=f"epoch {epoch}", leave=False,
               disable=args.quiet or not context.main)
    for batch in bar:
        mine = parallel.shard(batch, context)
        beta = linear_beta(step, args.anneal_cap, total_steps)
        optimizer.zero_grad()
        parts = [0.0, 0.0, 0.0]  # the last batch may leave a process without users
        if len(mine):
            items, targets, weights, n_steps = to_tensors(
                [seqs[u] for u in mine], n_items, args.next_k, context.device,
                args.loss_steps, shuffler)
            parts = model.batch_loss(net, items, targets, weights, n_steps, beta, args.bptt,
                                     backward=True, n_users=len(batch))
        loss, nll, kl = parallel.reduce_gradients(params, context, parts)
        if not math.isfinite(loss):
            raise Diverged(epoch, step, loss)
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), args.clip)
        optimizer.step()
        step += 1
        totals += np.array([loss, nll, kl]) * len(batch)
        n_users += len(batch)
        bar.set_postfix(loss=f"{totals[0] / n_users:.3f}")
    return list(totals / n_users), step, beta


def score_users(net, seqs, n_items, device, score="last"):
    """Scores (users x items, NumPy, in the order of seqs) from whole sequences: the last
    step's logits, or with score="mean" the log of the mean of all steps' distributions."""
    net.eval()
    scores = np.empty((len(seqs), n_items), dtype=np.float32)
    order = np.argsort([len(seq) for seq in seqs], kind="stable")
    for start in range(0, len(order), EVAL_BATCH_USERS):
        rows = order[start:start + EVAL_BATCH_USERS]
        padded, lengths = data.pad_sequences([seqs[r] for r in rows], n_items)
        scorer = model.last_step_scores if score == "last" else model.mean_step_scores
        logits = scorer(net, torch.from_numpy(padded).to(device),
                        torch.from_numpy(lengths).to(device))
        scores[rows] = logits.cpu().numpy()
    return scores


def evaluate(net, held_out, ks, n_items, device, score="last", per_user_csv=None):
    """Metrics over all held-out users: whole fold-in sequence in, every fold-in item masked,
    EVAL_CHUNK_USERS users' dense scores at a time; with per_user_csv, each user's metrics
    are also written there."""
    per_user = []
    for start in range(0, len(held_out.fold_in_seqs), EVAL_CHUNK_USERS):
        end = start + EVAL_CHUNK_USERS
        scores = score_users(net, held_out.fold_in_seqs[start:end], n_items, device, score)
        per_user.append(metrics.per_user_metrics(scores, held_out.fold_in[start:end],
                                                 held_out.target[start:end], ks))
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
            f"{error.step + 1}); try a smaller --lr or --clip; {kept}")


# ---------------------------------------------------------------- run


def run(args):
    started = time.time()
    runs.comet_mode(args.comet)  # refuse --comet online without a key before writing
    torch.set_num_threads(args.threads)
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
    train_seqs = [seq for seq in split.train_seqs if len(seq) >= 2]  # >= 1 step with a target
    run_dir = runs.make_run_dir(args.out_dir, FOLDER) if context.main else args.out_dir
    if args.resume is not None:
        runs.check_same_data(run_dir, ratings.sha256, ratings_path)
    config = {**runs.config_values(args), "resume": None, "model": MODEL_NAME,
              "device_used": str(device), "n_train_users": len(train_seqs),
              "n_items": split.n_items, "data_sha256": ratings.sha256,
              "processes": context.world}
    experiment = None
    if context.main:
        runs.write_json(run_dir / "config.json", config)
        experiment = runs.start_comet(args.comet, run_dir, config, runs.run_labels(
            MODEL_NAME, FOLDER.name, "B", args.holdout, args.seed,
            runs.dataset_label(args)))

    torch.manual_seed(args.seed)
    net = model.SVAE(split.n_items, args.embed_dim, args.rnn_dim, args.hidden_dim,
                     args.latent_dim, args.dropout).to(device)
    parallel.broadcast_weights(net, context)
    # foreach: one batched update for all tensors, the same numbers as the per-tensor loop
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                 foreach=True)
    # under torchrun every process loads last.pt: weights and optimiser state stay equal
    state = fresh_state() if args.resume is None else load_last(run_dir, net, optimizer, device)
    if context.main:
        if args.resume is not None:
            print(runs.starting_message(run_dir, state["epoch"]))
        runs.rewrite_jsonl(run_dir / "metrics.jsonl", state["history"])

    try:
        train_loop(args, net, optimizer, split, train_seqs, state, ks, context, run_dir,
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
    test = evaluate(net, split.test, ks, split.n_items, device, args.score,
                    run_dir / "test_per_user.csv")
    print(runs.summary_line(f"test (epoch {best['epoch']})", test))

    results = {"model": MODEL_NAME, "folder": FOLDER.name, "protocol": "B",
               "holdout": args.holdout, "test": test, "validation": best["validation"],
               "best_epoch": best["epoch"], "selected": {},
               "wall_seconds": round(time.time() - started, 2),
               "peak_memory_mb": round(runs.peak_memory_mb(), 1), "seed": args.seed,
               "data_sha256": ratings.sha256, "device": str(device),
               "processes": context.world}
    runs.finish_run(experiment, run_dir, results, run_dir / "best.pt", args.comet_log_model)
    return results


def train_loop(args, net, optimizer, split, train_seqs, state, ks, context, run_dir,
               experiment):
    """Epochs from state['epoch'] + 1 on, evaluating every --eval-every and at the end;
    under torchrun rank 0 evaluates and the others learn from it whether to stop."""
    if state["best"] is not None and state["bad_evals"] >= args.patience:
        return
    for epoch in range(state["epoch"] + 1, args.epochs + 1):
        epoch_started = time.time()
        (loss, nll, kl), state["step"], beta = train_epoch(net, optimizer, train_seqs, epoch,
                                                state["step"], args, split.n_items, context)
        train_seconds = time.time() - epoch_started
        state["epoch"] = epoch
        lr = optimizer.param_groups[0]["lr"]
        runs.log_epoch(experiment, epoch, {"train_loss": loss, "train_nll": nll,
                                           "train_kl": kl, "beta": beta, "lr": lr,
                                           "epoch_train_seconds": train_seconds})
        if epoch % args.eval_every and epoch != args.epochs:
            continue
        line = {"epoch": epoch, "train_loss": loss, "train_nll": nll, "train_kl": kl,
                "beta": beta, "lr": lr, "train_seconds": round(train_seconds, 2)}
        if parallel.broadcast(context.main and evaluate_epoch(
                args, net, optimizer, split, state, ks, context.device, run_dir, experiment,
                line), context):
            return


def evaluate_epoch(args, net, optimizer, split, state, ks, device, run_dir, experiment, line):
    """Validation, log and checkpoints after an epoch (rank 0); whether to stop early."""
    epoch = line["epoch"]
    validation = evaluate(net, split.validation, ks, split.n_items, device, args.score)
    runs.log_epoch(experiment, epoch, {}, validation)
    tqdm.write(runs.summary_line(f"epoch {epoch} loss {line['train_loss']:.3f} (nll "
                                 f"{line['train_nll']:.3f}, kl {line['train_kl']:.2f}, beta "
                                 f"{line['beta']:.3f}) train {line['train_seconds']:.1f}s "
                                 f"validation", validation))
    line = {**line, "validation": validation}
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
