"""TensorFlow's side of a run, the same file in AutoRec-TensorFlow and
NVIDIA-DeepRec-TensorFlow: TensorFlow imported without its start-up chatter, the
tf.distribute strategy and device of a run, and its atomic checkpoints.

Importing this module imports TensorFlow (quietly): main.py imports it once the command
line is parsed, so that --help and argument errors do not wait for TensorFlow.
"""
import contextlib
import json
import os
import sys
import tempfile

import runs


@contextlib.contextmanager
def captured_stderr():
    """Send what C++ libraries write to stderr to a temporary file, shown only on failure."""
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    with tempfile.TemporaryFile() as chatter:
        os.dup2(chatter.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved_stderr, 2)
            chatter.seek(0)
            sys.stderr.write(chatter.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)


def import_tensorflow():
    """Import TensorFlow without its start-up chatter.

    TF_CPP_MIN_LOG_LEVEL silences most C++ logs, but a few lines are written before the
    logging library is set up (and CUDA probing logs errors on machines without a GPU):
    those go through captured_stderr.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with captured_stderr():
        import tensorflow
        tensorflow.keras.optimizers  # keras is loaded lazily and logs again
    import absl.logging
    absl.logging.set_verbosity(absl.logging.ERROR)
    tensorflow.get_logger().setLevel("ERROR")
    return tensorflow


tf = import_tensorflow()


def pick_strategy(choice):
    """(tf.distribute strategy, device, its name for config.json): MirroredStrategy over
    the visible GPUs when there are two or more ("mirrored:N"), otherwise TensorFlow's
    default strategy on the one device, the GPU or the CPU ("default")."""
    with captured_stderr():
        gpus = tf.config.list_physical_devices("GPU")
    if choice == "cuda" and not gpus:
        sys.exit("error: --device cuda was given but TensorFlow sees no GPU")
    if choice == "cpu" or not gpus:
        tf.config.set_visible_devices([], "GPU")
        return tf.distribute.get_strategy(), "/CPU:0", "default"
    if len(gpus) == 1:
        return tf.distribute.get_strategy(), "/GPU:0", "default"
    devices = [f"/GPU:{k}" for k in range(len(gpus))]
    with captured_stderr():
        strategy = tf.distribute.MirroredStrategy(devices)
    return strategy, ",".join(devices), f"mirrored:{len(devices)}"


def placement(strategy, device):
    """Where the run's variables and computations go: the mirrored strategy's scope, or
    the one device."""
    if strategy.num_replicas_in_sync > 1:
        return strategy.scope()
    return tf.device(device)


class Checkpoints:
    """Atomic checkpoints of a run: 'last' (weights, optimiser, training state) and 'best'.

    The best weights are copied in memory (into best_network, a second network of the same
    shape) whenever the validation RMSE improves, and written to disk with the last state:
    save() writes 'best' if it changed since, then 'last', then train_state.json. main
    calls it every LAST_EVERY epochs and after the run's final epoch, so the run writes a
    few checkpoints instead of two every epoch. tf.train.CheckpointManager writes each
    checkpoint under a new name and then updates its index atomically; train_state.json
    (written atomically after the weights) names the checkpoints it belongs to. Both
    managers keep the previous checkpoint too, so a crash at any point leaves a state file
    whose checkpoints exist.
    """

    def __init__(self, run_dir, network, optimizer, best_network):
        self.run_dir = run_dir
        self.network, self.best_network = network, best_network
        self.state_path = run_dir / "train_state.json"
        self.last = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=network, optimizer=optimizer),
            str(run_dir / "checkpoints" / "last"), max_to_keep=2)
        self.best_checkpoint = tf.train.Checkpoint(model=best_network)
        self.best = tf.train.CheckpointManager(
            self.best_checkpoint, str(run_dir / "checkpoints" / "best"), max_to_keep=2)
        self.best_unsaved = False
        self.saved_epoch = 0

    def keep_best(self):
        """The network's current weights become the best ones (in memory until save)."""
        for kept, current in zip(self.best_network.variables, self.network.variables):
            kept.assign(current)
        self.best_unsaved = True

    def save_best(self, state):
        """Write the best weights if they changed since they were last written."""
        if self.best_unsaved:
            state["best"]["checkpoint"] = self.best.save(
                checkpoint_number=state["best"]["epoch"])
            self.best_unsaved = False

    def save(self, state):
        self.save_best(state)
        state["checkpoint"] = self.last.save(checkpoint_number=state["epoch"])
        runs.write_json(self.state_path, state)
        self.saved_epoch = state["epoch"]

    def load_state(self):
        """The saved training state with weights, optimiser and best weights restored, or
        None."""
        if not self.state_path.is_file():
            return None
        state = json.loads(self.state_path.read_text())
        self.last.checkpoint.restore(state["checkpoint"]).assert_consumed()
        if state["best"]["checkpoint"] is not None:
            self.best_checkpoint.restore(state["best"]["checkpoint"]).expect_partial()
        self.saved_epoch = state["epoch"]
        return state

    def restore_best(self):
        """Put the best weights back into the network."""
        for current, kept in zip(self.network.variables, self.best_network.variables):
            current.assign(kept)
