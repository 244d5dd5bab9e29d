"""AutoRec-TensorFlow: train and evaluate AutoRec (Sedhain et al. 2015) on MovieLens.

Rating prediction under Protocol A of PROTOCOLS.md (random 81/9/10 split of all
ratings, the training matrix as the only network input, clipped global RMSE). The
experiment: command line, data, the network, the training loop with early stopping on
validation RMSE, the single test evaluation and the results. The run folder (config.json,
metrics.jsonl, results.json), --resume and CometML logging use runs.py; TensorFlow's
start-up, the tf.distribute strategy and the checkpoints use tf_runs.py.
Usage: python AutoRec-TensorFlow/main.py --help
"""
import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

import data
import metrics
import runs
from runs import non_negative_float, non_negative_int, positive_float, positive_int

FOLDER = Path(__file__).resolve().parent
# The 'last' checkpoint (weights, optimiser, training state) is written every this many
# epochs, and after the final, the --stop-after and the early-stopping epoch; a resumed
# run repeats the epochs since (the same results, see README.md).
LAST_EVERY = 5
MODEL_NAME = "AutoRec"
DEFAULT_SEED = 1994


tf = model = tf_runs = None  # set by load_tensorflow() once the command line is parsed


def load_tensorflow():
    """Import TensorFlow quietly (tf_runs.py does), then model.py (which imports it too)."""
    global tf, model, tf_runs
    import tf_runs as tf_runs_module
    import model as model_module
    tf_runs, tf, model = tf_runs_module, tf_runs_module.tf, model_module


class TrainingDiverged(Exception):
    """The training loss became NaN or infinite."""


# ---------------------------------------------------------------- command line


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="AutoRec (Sedhain et al. 2015) on MovieLens-1M (the default), "
                    "another MovieLens set or your own ratings file: rating prediction "
                    "(PROTOCOLS.md, Protocol A).")
    runs.add_data_arguments(parser, FOLDER.name, data.default_data_dir())
    parser.add_argument("--seed", type=non_negative_int, default=DEFAULT_SEED,
                        help="seed of the split, the initial weights and the batch order")
    parser.add_argument("--variant", choices=("item", "user"), default="item",
                        help="item: I-AutoRec (encode each movie's ratings); "
                             "user: U-AutoRec (encode each user's ratings)")
    parser.add_argument("--hidden", type=positive_int, default=500,
                        help="hidden units (default: %(default)s)")
    parser.add_argument("--lam", type=non_negative_float, default=300.0,
                        help="L2 weight lambda of (lambda/2)(||W||^2 + ||V||^2) "
                             "(default: %(default)s, chosen on validation, see README.md)")
    parser.add_argument("--epochs", type=positive_int, default=50,
                        help="maximum number of epochs (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=64,
                        help="rows (movies or users) per batch (default: %(default)s)")
    parser.add_argument("--lr", type=positive_float, default=1e-3,
                        help="Adam learning rate of the first epoch (default: %(default)s)")
    parser.add_argument("--lr-decay", type=runs.decay_factor, default=0.95,
                        help="the learning rate is multiplied by this after each epoch "
                             "(default: %(default)s)")
    parser.add_argument("--patience", type=positive_int, default=10,
                        help="stop after this many evaluations without a better "
                             "validation RMSE (default: %(default)s)")
    parser.add_argument("--eval-every", type=positive_int, default=1,
                        help="evaluate on validation every this many epochs")
    parser.add_argument("--stop-after", type=positive_int, metavar="EPOCH",
                        help="stop after this epoch's checkpoint as if interrupted "
                             "(to exercise --resume)")
    parser.add_argument("--refit", action="store_true",
                        help="after the run, train a fresh network (same seed) on training "
                             "+ validation ratings for the best epoch's number of epochs and "
                             "evaluate it on the test set too (results.json 'refit'); "
                             "a resumed run refits when its first run was given --refit")
    runs.add_run_arguments(parser)
    return runs.parse_with_resume(parser, argv)


# ---------------------------------------------------------------- model and evaluation


def network_input(split, variant):
    """The training matrix with one row per encoded vector: movies (item) or users, as a
    sparse float32 CSR matrix (batches are densified by model.py as they are used)."""
    matrix = split.train.T if variant == "item" else split.train
    return sp.csr_matrix(matrix, dtype=np.float32)


def evaluate(network, inputs, pairs, split, variant, predictions_csv=None):
    """RMSE of the network on pairs (data.Pairs), the training matrix as its input;
    with predictions_csv, also every pair's final prediction written there."""
    rows, cols = (pairs.items, pairs.users) if variant == "item" else (pairs.users, pairs.items)
    predictions = model.predict_pairs(network, inputs, rows, cols)
    if predictions_csv is not None:
        metrics.write_predictions(predictions_csv, pairs, predictions, split)
    return metrics.rating_metrics(predictions, pairs, split.train)




def build(args, inputs, strategy=None):
    """A fresh network (initial weights from args.seed) and its trainer on `inputs`,
    their variables created under the tf.distribute strategy (default: the current)."""
    network = new_network(args, inputs, strategy)
    return network, model.Trainer(network, inputs, args.lam, args.lr, args.lr_decay,
                                  strategy=strategy)


def new_network(args, inputs, strategy=None):
    with (strategy or tf.distribute.get_strategy()).scope():
        return model.AutoRec(int(inputs.shape[1]), args.hidden, seed=args.seed)


def initial_state():
    return {"epoch": 0, "checkpoint": None, "history": [], "bad_evaluations": 0,
            "stopped": False, "wall_seconds": 0.0,
            "best": {"epoch": None, "validation": None, "checkpoint": None}}


def train(args, split, network, inputs, trainer, checkpoints, state, experiment, run_dir):
    """Epochs with evaluation, checkpoints and early stopping; returns False if interrupted."""
    started = time.time() - state["wall_seconds"]
    for epoch in range(state["epoch"] + 1, args.epochs + 1):
        if state["stopped"]:
            break
        with tqdm(total=math.ceil(int(inputs.shape[0]) / args.batch_size),
                  desc=f"epoch {epoch}", unit="batch", leave=False,
                  disable=args.quiet) as bar:
            def progress(losses):
                bar.update(1)
                bar.set_postfix(loss=f"{sum(losses) / len(losses):.4f}")
            loss = trainer.train_epoch(args.batch_size, args.seed, epoch, progress)
        if not math.isfinite(loss):
            checkpoints.save_best(state)  # the message names the best checkpoint
            raise TrainingDiverged(diverged_message(loss, epoch, state))
        runs.log_epoch(experiment, epoch, {"train_loss": loss})
        if epoch % args.eval_every and epoch != args.epochs:
            continue
        validation = evaluate(network, inputs, split.validation, split, args.variant)
        record = {"epoch": epoch, "train_loss": loss, "validation": validation}
        state["history"].append(record)
        runs.append_jsonl(run_dir / "metrics.jsonl", record)
        runs.log_epoch(experiment, epoch, {}, validation)
        best = state["best"]
        improved = best["validation"] is None or validation["rmse"] < best["validation"]["rmse"]
        if improved:
            state["best"].update(epoch=epoch, validation=validation)
            checkpoints.keep_best()
        state["bad_evaluations"] = 0 if improved else state["bad_evaluations"] + 1
        state["stopped"] = state["bad_evaluations"] >= args.patience
        state["epoch"] = epoch
        state["wall_seconds"] = time.time() - started
        stop_here = args.stop_after is not None and epoch >= args.stop_after
        if (epoch - checkpoints.saved_epoch >= LAST_EVERY or state["stopped"]
                or epoch >= args.epochs or stop_here):
            checkpoints.save(state)
        tqdm.write(f"epoch {epoch}: train loss {loss:.4f}, validation RMSE "
                   f"{validation['rmse']:.4f}" + (" (best)" if improved else ""))
        if stop_here:
            print(f"stopped after epoch {epoch} as asked; continue with --resume {run_dir}")
            return False
    return True


def diverged_message(loss, epoch, state):
    best = state["best"]
    kept = (f"best checkpoint (epoch {best['epoch']}) kept at {best['checkpoint']}"
            if best["checkpoint"] else "no checkpoint had been written yet")
    return (f"training loss became {loss} at epoch {epoch}; the run was stopped "
            f"(try a smaller --lr); {kept}")


# ---------------------------------------------------------------- refit


def refit_split(split):
    """The split a refit trains on: its training matrix holds the training and the
    validation ratings; it has no validation pairs (nothing is selected during a refit)
    and the same test pairs (read only by the single evaluation after the refit)."""
    validation = split.validation
    held = sp.csr_matrix((validation.ratings, (validation.users, validation.items)),
                         shape=split.train.shape, dtype=np.float32)
    empty = type(validation)(validation.users[:0], validation.items[:0],
                             validation.ratings[:0])
    return dataclasses.replace(split, train=(split.train + held).tocsr(), validation=empty)


def refit_train(args, split, epochs, experiment=None, strategy=None):
    """A fresh network (same seed and settings) trained on refit_split(split) for `epochs`
    epochs with the learning-rate schedule of the run, no evaluation in between; returns
    (network, its input matrix, the refit split). Reads no test rating."""
    merged = refit_split(split)
    inputs = network_input(merged, args.variant)
    network, trainer = build(args, inputs, strategy)
    for epoch in range(1, epochs + 1):
        with tqdm(total=math.ceil(int(inputs.shape[0]) / args.batch_size),
                  desc=f"refit epoch {epoch}", unit="batch", leave=False,
                  disable=args.quiet) as bar:
            loss = trainer.train_epoch(args.batch_size, args.seed, epoch,
                                       lambda losses: bar.update(1))
        if not math.isfinite(loss):
            raise TrainingDiverged(f"refit: training loss became {loss} at epoch {epoch}; "
                                   f"the run's own results were not written")
        runs.log_epoch(experiment, epoch, {"refit_train_loss": loss})
        tqdm.write(f"refit epoch {epoch}/{epochs}: train loss {loss:.4f}")
    return network, inputs, merged


def refit(args, split, epochs, run_dir, experiment, strategy=None):
    """--refit: train on training + validation for `epochs` epochs, save the weights
    (checkpoints/refit/), evaluate the test set once (refit_test_predictions.csv);
    returns results.json's "refit" entry."""
    started = time.time()
    network, inputs, merged = refit_train(args, split, epochs, experiment, strategy)
    tf.train.CheckpointManager(tf.train.Checkpoint(model=network),
                               str(run_dir / "checkpoints" / "refit"),
                               max_to_keep=1).save(checkpoint_number=epochs)
    test = evaluate(network, inputs, merged.test, merged, args.variant,
                    run_dir / "refit_test_predictions.csv")
    result = {"epochs": epochs, "train_ratings": int(merged.train.nnz), "test": test,
              "wall_seconds": round(time.time() - started, 2)}
    if experiment is not None:
        experiment.log_metrics(test, prefix="refit_test")
        experiment.log_metrics({"refit_epochs": epochs, "refit_train_ratings":
                                result["train_ratings"],
                                "refit_wall_seconds": result["wall_seconds"]})
    print(f"refit on training + validation ({result['train_ratings']} ratings, {epochs} "
          f"epochs): test RMSE {test['rmse']:.4f}")
    return result


# ---------------------------------------------------------------- run


def run(args):
    started = time.time()
    runs.comet_mode(args.comet)  # refuse --comet online without a key before writing
    ratings_path = data.find_ratings(args.data_dir, args.dataset, args.ratings_file,
                                     not args.no_download, quiet=args.quiet)
    ratings = data.load_ratings(ratings_path, args.format)
    split = data.split_ratings(ratings, seed=args.seed)
    load_tensorflow()
    # --device cuda without a GPU: exit
    strategy, device, strategy_name = tf_runs.pick_strategy(args.device)
    tf.config.experimental.enable_op_determinism()
    run_dir = runs.make_run_dir(args.out_dir, FOLDER)  # once the data and device are good
    if args.resume is not None:
        runs.check_same_data(run_dir, ratings.sha256, ratings_path)
    config = {"args": {**runs.config_values(args), "resume": None}, "model": MODEL_NAME,
              "device": args.device, "device_used": device, "n_users": len(split.user_ids),
              "n_items": len(split.item_ids), "n_train": int(split.train.nnz),
              "n_validation": len(split.validation), "n_test": len(split.test),
              "data_sha256": ratings.sha256}
    config["strategy"] = strategy_name  # tf.distribute: "default" or "mirrored:N"
    runs.write_json(run_dir / "config.json", config)
    hyperparameters = {**{k: v for k, v in config["args"].items()
                          if k not in ("resume", "stop_after", "out_dir")},
                       **{k: v for k, v in config.items() if k != "args"}}
    experiment = runs.start_comet(args.comet, run_dir, hyperparameters, runs.run_labels(
        MODEL_NAME, FOLDER.name, "A", "random", args.seed,
        runs.dataset_label(args)))

    with tf_runs.placement(strategy, device):
        inputs = network_input(split, args.variant)
        network, trainer = build(args, inputs, strategy)
        best_network = new_network(args, inputs, strategy)
        checkpoints = tf_runs.Checkpoints(run_dir, network, trainer.optimizer, best_network)
        state = (checkpoints.load_state() if args.resume is not None else None) or \
            initial_state()
        if args.resume is not None:
            print(runs.starting_message(run_dir, state["epoch"]))
        runs.rewrite_jsonl(run_dir / "metrics.jsonl", state["history"])
        for record in state["history"]:  # the resumed experiment's curves start at epoch 1
            runs.log_epoch(experiment, record["epoch"], {"train_loss": record["train_loss"]},
                           record["validation"])
        previous_wall = state["wall_seconds"]
        try:
            finished = train(args, split, network, inputs, trainer, checkpoints, state,
                             experiment, run_dir)
        except TrainingDiverged:
            runs.finish_comet(experiment, run_dir)
            raise
        if not finished:
            runs.finish_comet(experiment, run_dir)
            return None
        checkpoints.restore_best()
        test = evaluate(network, inputs, split.test, split, args.variant,
                        run_dir / "test_predictions.csv")
        best = state["best"]
        print(f"test RMSE {test['rmse']:.4f} (best epoch {best['epoch']}, validation RMSE "
              f"{best['validation']['rmse']:.4f})")
        if args.refit:
            del network, trainer, best_network, checkpoints, inputs  # memory for the refit
            try:
                refitted = refit(args, split, best["epoch"], run_dir, experiment,
                                 strategy)
            except TrainingDiverged:
                runs.finish_comet(experiment, run_dir)
                raise

    results = {"model": MODEL_NAME, "folder": FOLDER.name, "protocol": "A",
               "variant": args.variant, "test": test, "validation": best["validation"],
               "best_epoch": best["epoch"], "selected": {},
               "wall_seconds": round(previous_wall + time.time() - started, 2),
               "peak_memory_mb": round(runs.peak_memory_mb(), 1), "seed": args.seed,
               "data_sha256": ratings.sha256, "device": device}
    results["strategy"] = strategy_name
    if args.refit:
        results["refit"] = refitted
    runs.finish_run(experiment, run_dir, results, run_dir / "checkpoints" / "best",
                    args.comet_log_model)
    return results


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except data.DataError as error:
        sys.exit(f"error: {error}")
    except TrainingDiverged as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
