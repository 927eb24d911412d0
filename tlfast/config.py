"""Every setting of every tlfast command, defined once, importing no TensorFlow.

Each command has one frozen dataclass here; its absl flags are generated from
the fields (`tlfast.cli`), so a setting has one name, one default, one help
text and one set of allowed values, shared by the library and the scripts
(flax's `examples/imagenet` pattern: the script reads flags and calls one
library function with one config object). `tests/test_config.py` fails when
a field has no flag, a flag no field, or an enum flag other choices than the
constant here.

`__post_init__` checks values only, so a bad setting fails when the config is
made, before anything is imported or read. What needs the file system, the
backbone registry or the Keras backend is checked once where the work
happens (`tlfast.resolve`).
"""

import dataclasses
import os

RESIZE_MODES = ("resize", "crop", "pad")
# Centre crop keeps the aspect ratio ImageNet backbones were trained on;
# measured +5 points on hymenoptera over stretching.
DEFAULT_RESIZE = "crop"
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
DISTRIBUTIONS = ("none", "mirrored", "multi_worker", "tpu")
EXPORT_FORMATS = ("keras", "saved_model", "tflite", "tflite_fp16",
                  "tflite_dynamic", "tflite_int8")
EVAL_SPLITS = ("auto", "validation", "train", "test", "all")
FEATURE_DTYPES = ("float16", "float32")
CLASS_WEIGHTS = ("none", "balanced")
# Augmented views cached by default for small training sets: with cached
# views the head trains on augmented features, without them only fine-tuning
# sees augmentation. Measured (MobileNet-0.25, "standard"): hymenoptera (244
# training images) 0.8954 -> 0.9020 with 2 views (4 views: 0.8954), +4.6 s of
# extraction here; flowers224 (2,569) unchanged at 0.8655, +45 s.
AUTO_VIEWS = 2
AUTO_VIEWS_MAX_TRAIN = 5000
SERVICE_ROLES = ("all", "dispatcher", "worker")
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "tlfast")
# PIL's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS): 1024*1024*1024
# // 4 // 3 pixels, about 0.25 GiB of RGB.
DEFAULT_MAX_PIXELS = 89_478_485


def setting(default, help, *, choices=None, required=False):
    """A dataclass field with what its command-line flag needs.

    Args:
      default: The default value (also the flag's).
      help: The flag's help text.
      choices: Allowed values (an enum flag), or None.
      required: The command refuses to run without it.
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "choices": choices, "required": required})


def _fail(name, value, expected):
    raise ValueError(f"{name} must be {expected}. Received: {name}={value!r}")


def check_values(config, rules):
    """Raises ValueError for the first field whose rule does not hold.

    Args:
      config: A dataclass instance.
      rules: (field name, predicate, what was expected) triples.
    """
    for name, ok, expected in rules:
        value = getattr(config, name)
        if isinstance(value, bool) and not isinstance(
                config.__dataclass_fields__[name].default, bool):
            _fail(name, value, expected)  # True is not a batch size.
        try:
            good = ok(value)
        except TypeError:
            good = False
        if not good:
            _fail(name, value, expected)


def check_choices(config):
    """Every field declared with `choices` holds one of them (or None)."""
    for field in dataclasses.fields(config):
        choices = field.metadata.get("choices")
        value = getattr(config, field.name)
        if choices and value is not None and value not in choices:
            _fail(field.name, value, f"one of {choices}")


def export_formats(export):
    """The formats of a comma list (or a list), checked and deduplicated.

    Returns:
      A tuple, e.g. ("keras", "tflite"); () for "" or None.
    """
    from tlfast.errors import suggest

    names = export.split(",") if isinstance(export, str) else (export or ())
    formats = []
    for name in (str(n).strip() for n in names):
        if name and name not in EXPORT_FORMATS:
            raise ValueError(
                f"Unknown export format '{name}'."
                f"{suggest(name, EXPORT_FORMATS)} Expected a comma list of "
                f"{', '.join(EXPORT_FORMATS)}. Received: export={export!r}")
        if name and name not in formats:
            formats.append(name)
    return tuple(formats)


def _positive(v):
    return v > 0


def _at_least(low):
    return lambda v: int(v) == v and v >= low


def _fraction(v):
    return 0.0 <= v < 1.0


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """Head architecture and training.

    Attributes:
      hidden_units: Width of an optional hidden ReLU layer (0: none, a linear
        classifier on the features).
      dropout: Dropout rate before each Dense layer.
      learning_rate: Adam learning rate.
      epochs: Maximum epochs (early stopping usually ends sooner).
      batch_size: Examples per step at most; a smaller training set gets
        smaller batches, so that an epoch has 10 steps and the training 100
        (`head.step_batch_size`).
      patience: Early-stopping patience in epochs, on validation loss; the
        best epoch's weights are restored. 0 disables early stopping.
      label_smoothing: Cross-entropy label smoothing.
      seed: Seeds the initialisers and dropout.
    """

    hidden_units: int = 0
    dropout: float = 0.2
    learning_rate: float = 3e-3
    epochs: int = 50
    batch_size: int = 256
    patience: int = 10
    label_smoothing: float = 0.0
    seed: int = 0

    def __post_init__(self):
        check_values(self, _HEAD_RULES)


# The head's value rules, also `TrainConfig`'s for the same settings (under
# its names: `head_batch_size` there is `batch_size` here).
_HEAD_RULES = [
    ("hidden_units", _at_least(0), "an integer >= 0"),
    ("dropout", _fraction, "in [0, 1)"),
    ("learning_rate", _positive, "> 0"),
    ("epochs", _at_least(1), "an integer >= 1"),
    ("batch_size", _at_least(1), "an integer >= 1"),
    ("patience", _at_least(0), "an integer >= 0"),
    ("label_smoothing", _fraction, "in [0, 1)"),
]
_HEAD = HeadConfig()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs (`tlfast-train`'s flags)."""

    data_dir: str | None = setting(
        None, "Folder of class sub-folders of images, or with train/ and "
        "validation/ (or val/) sub-folders of them.")
    labels_csv: str | None = setting(
        None, "CSV file with columns path,label (paths relative to "
        "--data_dir, one row per image): labels from it instead of class "
        "folder names.")
    multi_label: bool = setting(
        False, "Each image may have several labels (--labels_csv's label "
        "column, split by --label_delimiter): a sigmoid head with binary "
        "cross-entropy, per-label precision/recall/F1, and a decision "
        "threshold chosen on validation.")
    label_delimiter: str = setting(
        " ", "What separates the labels of a --multi_label row.")
    tfds_name: str | None = setting(
        None, "TFDS dataset name, e.g. tf_flowers (instead of --data_dir).")
    tfds_data_dir: str | None = setting(
        None, "TFDS data folder (default: TFDS's; for a --data_dir "
        "prepared as TFDS records: <cache_dir>/tfds).")
    output_dir: str | None = setting(
        None, "Where model.keras, labels.txt, metrics.json, ... are written.",
        required=True)
    validation_split: float = setting(
        0.2, "Validation fraction, when the data has no validation split.")
    backbone: str = setting(
        "mobilenet_v2", "Backbone registry name (tlfast.list_backbones()).")
    weights: str | None = setting(
        "imagenet", "imagenet | none | path to a .weights.h5 (no top) or "
        "full-model .h5 file.")
    image_size: int | None = setting(
        None, "Square input size (default: the backbone's).")
    resize: str = setting(DEFAULT_RESIZE, "How images become square.",
                          choices=RESIZE_MODES)
    batch_size: int = setting(32, "Images per batch (extraction, "
                              "fine-tuning, evaluation).")
    # Cached feature vectors are tiny: big head batches keep an epoch to a
    # few steps (per-step overhead dominates on small heads).
    head_batch_size: int = setting(
        _HEAD.batch_size, "Largest batch for head training on cached features "
        "(a smaller set gets smaller batches: 10 steps an epoch, 100 in all).")
    epochs: int = setting(_HEAD.epochs, "Maximum head-training epochs "
                          "(early stopping on validation loss).")
    learning_rate: float = setting(_HEAD.learning_rate, "Head learning rate.")
    hidden_units: int = setting(_HEAD.hidden_units, "Hidden layer width in "
                                "the head (0: linear head).")
    dropout: float = setting(_HEAD.dropout, "Head dropout rate.")
    patience: int = setting(
        _HEAD.patience, "Early-stopping patience in epochs on validation loss, "
        "for the head and for fine-tuning; the best epoch's weights are "
        "restored (0: off, the last epoch's weights are kept).")
    class_weight: str = setting(
        "none", "balanced: weigh each class's examples by inverse frequency "
        "(n / (classes x n_class)) in the head's and fine-tuning's loss, so "
        "that rare classes count as much as common ones.",
        choices=CLASS_WEIGHTS)
    label_smoothing: float = setting(_HEAD.label_smoothing,
                                     "Label smoothing.")
    fine_tune_epochs: int = setting(0, "Epochs of end-to-end fine-tuning "
                                    "after the head (0: none).")
    # Fine-tuning defaults, measured with --fine_tune_epochs=10 on the shared
    # MobileNet-0.25 (val_accuracy; head alone: hymenoptera 0.902,
    # flowers224 0.8655). All blocks, as fastai's fine_tune and the Keras
    # guide: hymenoptera's top 4 blocks at 3e-4 0.895, top 6 at 1e-3 0.804,
    # all 14 at 1e-4 0.935. Rate and decay, (hymenoptera, flowers224):
    # 1e-4 (0.935, 0.880); 3e-4 (0.902, 0.898); 3e-4 with 0.8 a block down
    # (0.922, 0.893); 2e-4 with 0.9 (0.928, 0.887), the only setting that
    # gains 2 points on both; 2e-4 (0.908, -); 3e-4 with 0.7 (0.915, -).
    # Hymenoptera's 153 validation images make 0.0065 an image: its epochs
    # swing by 3-8 images, so these rank settings only roughly.
    fine_tune_blocks: int | None = setting(
        None, "Top backbone blocks unfrozen for fine-tuning (default: all).")
    fine_tune_learning_rate: float = setting(
        2e-4, "Fine-tuning learning rate (of the head and the top block).")
    fine_tune_lr_decay: float = setting(
        0.9, "Discriminative fine-tuning rates: each backbone block below "
        "the top one learns at this fraction of the rate of the block above "
        "(fastai's discriminative rates; 1: one rate for all).")
    lr_find: bool = setting(
        False, "Before training the head, sweep its learning rate on the "
        "cached features (fastai's lr_find): writes lr_find.png and logs a "
        "suggested --learning_rate; the head then trains with the rate given.")
    augment: str = setting(
        "standard", "Augmentation preset (none, flip, light, standard, "
        "seed_recipe, strong) or ops list, e.g. 'flip,rotation:0.1,zoom:0.2'.")
    augment_views: int | None = setting(
        None, "Augmented views of each training image cached as extra "
        "head-training features (each view costs a backbone pass). Default: "
        f"{AUTO_VIEWS} for training sets of up to {AUTO_VIEWS_MAX_TRAIN} "
        "images, 0 above (augmentation then takes part only in "
        "fine-tuning); 0 with --augment=none.")
    precision: str = setting(
        "auto", "Compute precision (auto: mixed on capable GPUs, float32 on "
        "CPU). tlfast-train sets the Keras policy; library callers set it "
        "themselves (see tlfast.precision).", choices=PRECISIONS)
    cache_dir: str = setting(DEFAULT_CACHE_DIR, "Scan, pixel and feature "
                             "caches.")
    ram_budget_mb: int = setting(2048, "RAM for the decoded pixel cache; "
                                 "beyond it the cache goes to disk.")
    feature_dtype: str = setting(
        "float16", "How cached features are stored: float16 halves the disk "
        "and RAM (the head trains in float32 either way).",
        choices=FEATURE_DTYPES)
    feature_shard_size: int = setting(512, "Examples per feature-cache shard "
                                      "(the unit of resumption).")
    max_pixels: int = setting(DEFAULT_MAX_PIXELS, "Images with more pixels "
                              "are skipped (decompression-bomb guard).")
    skip_placeholders: bool = setting(
        True, "Skip images that look like 'image not found' graphics (a few "
        "colours, one covering most of the image); --noskip_placeholders "
        "keeps them, e.g. for line drawings or icons.")
    follow_links: bool = setting(
        False, "Use files and folders reached through symbolic links that "
        "lead outside --data_dir (by default they are skipped and reported: "
        "a link can reach any file this process may read).")
    export: str = setting(
        "", "Comma list of export formats: keras, saved_model, tflite, "
        "tflite_fp16, tflite_dynamic, tflite_int8 (each checked for parity "
        "with model.keras on the validation images).")
    data_service_address: str | None = setting(
        None, "grpc://host:port of a tf.data service dispatcher (see "
        "tlfast-data-service): decoding runs on its workers.")
    prepare_tfds: bool = setting(
        True, "Read --data_dir through tlfast's TFDS image-folder builder: "
        "validated and prepared once (under --tfds_data_dir or "
        "<cache_dir>/tfds), reused while the folder is unchanged. "
        "--noprepare_tfds reads the loose files.")
    distribution: str = setting(
        "none", "tf.distribute strategy (TensorFlow backend): mirrored "
        "replicates over local GPUs; multi_worker runs the same command on "
        "every machine of TF_CONFIG and shards feature extraction over them "
        "(shared --cache_dir); tpu uses the TPU of TPU_NAME or this TPU VM.",
        choices=DISTRIBUTIONS)
    seed: int = setting(0, "Seed for split, initialisation, shuffling and "
                        "augmentation.")
    strict: bool = setting(False, "Fail on any bad image instead of "
                           "skipping it.")
    lock_timeout_s: float = setting(
        0.0, "Seconds to wait for a lock another tlfast job holds (this run "
        "folder, the prepared data, a feature cache) before failing with the "
        "lock file's path; 0 waits as long as it takes.")
    reuse_outputs: bool = setting(
        True, "When --output_dir already holds the outputs of an identical "
        "run (same data, settings, weights and versions; files unchanged; "
        "features still cached), keep them instead of training again; "
        "--noreuse_outputs always trains.")

    def __post_init__(self):
        self._check_sources()
        check_choices(self)
        check_values(self, [
            ("validation_split", lambda v: 0 < v < 1, "in (0, 1)"),
            ("image_size", lambda v: v is None or _at_least(1)(v),
             "None (the backbone's) or an integer >= 1"),
            ("batch_size", _at_least(1), "an integer >= 1"),
            *((("head_batch_size" if name == "batch_size" else name),
               rule, expected) for name, rule, expected in _HEAD_RULES),
            ("fine_tune_learning_rate", _positive, "> 0"),
            ("fine_tune_epochs", _at_least(0), "an integer >= 0"),
            ("fine_tune_blocks", lambda v: v is None or _at_least(0)(v),
             "None (all) or an integer >= 0"),
            ("fine_tune_lr_decay", lambda v: 0 < v <= 1, "in (0, 1]"),
            ("augment_views", lambda v: v is None or _at_least(0)(v),
             "None (auto) or an integer >= 0"),
            ("ram_budget_mb", _at_least(0), "an integer >= 0"),
            ("feature_shard_size", _at_least(1), "an integer >= 1"),
            ("max_pixels", _at_least(1), "an integer >= 1"),
            ("lock_timeout_s", lambda v: v >= 0, ">= 0"),
            ("seed", lambda v: _at_least(0)(v) and v < 2**32,
             "an integer in [0, 2**32)"),
        ])
        from tlfast.data.augment_spec import parse_augmentation

        ops = parse_augmentation(self.augment)  # Also checks the spec.
        if self.augment_views and not ops:
            raise ValueError("augment_views > 0 needs augmentation ops. "
                             f"Received: augment={self.augment!r}")
        self._check_combinations()

    def _check_sources(self):
        if not self.output_dir:
            raise ValueError("output_dir is required: where the model, labels "
                             "and reports go. Received: output_dir=None")
        if not self.data_dir and not self.tfds_name:
            raise ValueError(
                "Pass data_dir (a folder of class sub-folders) or tfds_name "
                "(a TFDS dataset, e.g. tf_flowers). Received neither.")
        if self.data_dir and self.tfds_name:
            raise ValueError(
                "Pass either data_dir or tfds_name, not both. Received: "
                f"data_dir={self.data_dir!r}, tfds_name={self.tfds_name!r}")
        if self.labels_csv and not self.data_dir:
            raise ValueError(
                "labels_csv needs data_dir, the folder its paths are relative "
                f"to. Received: labels_csv={self.labels_csv!r}, data_dir=None")
        if self.multi_label and not self.labels_csv:
            raise ValueError(
                "multi_label needs labels_csv (a CSV whose label column holds "
                "each image's labels separated by label_delimiter): class "
                "folders give one label per image. Received: multi_label=True, "
                "labels_csv=None")
        if self.data_service_address and self.tfds_name:
            # Only image folders are decoded on service workers; a TFDS
            # dataset would silently decode here.
            raise ValueError(
                "data_service_address works with data_dir (an image folder), "
                f"not tfds_name. Received: tfds_name={self.tfds_name!r}, "
                f"data_service_address={self.data_service_address!r}")

    def _check_combinations(self):
        if self.multi_label and self.class_weight != "none":
            raise ValueError(
                "class_weight='balanced' weighs single-label classes; with "
                "multi_label it is not supported. Received: class_weight="
                f"{self.class_weight!r}, multi_label=True")
        if "tflite_int8" in export_formats(self.export) and self.tfds_name:
            # Its calibration images come from the folder's files.
            raise ValueError(
                "export=tflite_int8 needs an image folder (data_dir) for its "
                "calibration images; with a TFDS dataset, export tflite "
                f"(float) instead. Received: tfds_name={self.tfds_name!r}")

    def head(self):
        """The `HeadConfig` these settings describe."""
        return HeadConfig(
            hidden_units=self.hidden_units, dropout=self.dropout,
            learning_rate=self.learning_rate, epochs=self.epochs,
            batch_size=self.head_batch_size, patience=self.patience,
            label_smoothing=self.label_smoothing, seed=self.seed)

    @property
    def export_formats(self):
        return export_formats(self.export)

    def views_for(self, num_train):
        """The augmented views a run with `num_train` training images caches.

        `augment_views`, or when None (auto): `AUTO_VIEWS` for up to
        `AUTO_VIEWS_MAX_TRAIN` images with augmentation ops, else 0.
        """
        from tlfast.data.augment_spec import parse_augmentation

        if self.augment_views is not None:
            return self.augment_views
        if not parse_augmentation(self.augment) or num_train > AUTO_VIEWS_MAX_TRAIN:
            return 0
        return AUTO_VIEWS

    @property
    def lock_timeout(self):
        """`lock_timeout_s` for `tlfast.locks.lock`: None waits for ever."""
        return self.lock_timeout_s or None


_CHECKS_BATCH = ("batch_size", _at_least(1), "an integer >= 1")
_MODEL_HELP = ("model.keras written by tlfast-train (or its run folder); "
               "labels.txt and run.json are read from beside it.")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """`tlfast-evaluate`: a trained model on a labelled image folder."""

    model: str | None = setting(None, _MODEL_HELP, required=True)
    data_dir: str | None = setting(
        None, "Folder of class sub-folders, or with train/ and val/ "
        "(validation/, test/) sub-folders of them.", required=True)
    output_dir: str | None = setting(
        None, "Where the report and plots go (into a run folder: its "
        "eval_<split>/ sub-folder).", required=True)
    split: str = setting(
        "auto", "Which images: auto = the run's validation images on the "
        "folder it trained on, the validation folder of another pre-split "
        "folder, else all images. Without a validation folder, "
        "train/validation re-create the run's own split.", choices=EVAL_SPLITS)
    labels_csv: str | None = setting(
        None, "CSV with columns path,label for --data_dir (default: the "
        "run's --labels_csv when --data_dir is the folder it trained on, "
        "else class folder names).")
    batch_size: int = setting(32, "Images per forward pass.")
    top_k: int = setting(5, "k of the top-k accuracy (capped at the number "
                         "of classes).")
    worst: int = setting(20, "How many confidently misclassified files to "
                         "list.")
    cache_dir: str = setting(DEFAULT_CACHE_DIR, "Scan cache (shared with "
                             "tlfast-train).")

    def __post_init__(self):
        check_choices(self)
        check_values(self, [_CHECKS_BATCH,
                            ("top_k", _at_least(1), "an integer >= 1"),
                            ("worst", _at_least(0), "an integer >= 0")])


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    """`tlfast-predict`: top-k predictions of a trained model for files."""

    model: str | None = setting(None, _MODEL_HELP, required=True)
    images: str | None = setting(None, "Folder, glob pattern or file.",
                                 required=True)
    output: str | None = setting(None, "CSV file to write.", required=True)
    top_k: int = setting(3, "Labels per image (capped at the number of "
                         "classes).")
    batch_size: int = setting(32, "Images per forward pass.")
    resize: str | None = setting(
        None, "How images are made square (default: the run's, from "
        "run.json).", choices=RESIZE_MODES)
    skip_placeholders: bool | None = setting(
        None, "Skip blank / 'image not found' graphics (default: as the run "
        "did, from run.json).")

    def __post_init__(self):
        check_choices(self)
        check_values(self, [_CHECKS_BATCH,
                            ("top_k", _at_least(1), "an integer >= 1")])


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """`tlfast-export`: a trained model in serving formats, parity-checked."""

    model: str | None = setting(None, "model.keras written by tlfast-train "
                                "(or its run folder).", required=True)
    output_dir: str | None = setting(None, "Where the exports go.",
                                     required=True)
    formats: str = setting("keras,saved_model,tflite,tflite_int8",
                           "Comma-separated: "
                           f"{', '.join(EXPORT_FORMATS)}.")
    data_dir: str | None = setting(None, "The run's data folder (default: "
                                   "from run.json).")
    num_representative: int = setting(100, "Training images that calibrate "
                                      "tflite_int8.")
    parity_images: int = setting(
        1000, "At most this many validation images for the parity checks "
        "(evenly spaced); 0 skips the checks.")
    batch_size: int = setting(32, "Images per forward pass.")

    def __post_init__(self):
        check_values(self, [
            _CHECKS_BATCH,
            ("num_representative", _at_least(1), "an integer >= 1"),
            ("parity_images", _at_least(0), "an integer >= 0")])
        if not export_formats(self.formats):
            raise ValueError("formats must name at least one of "
                             f"{', '.join(EXPORT_FORMATS)}. Received: "
                             f"formats={self.formats!r}")


_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")


def _port(v):
    return _at_least(0)(v) and v < 65536


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    """`tlfast-data-service`: tf.data service servers for tlfast-train.

    The servers listen on every interface without authentication: run them
    on a trusted network only (BUILD.md, "Scaling out").
    """

    role: str = setting("all", "What to start here.", choices=SERVICE_ROLES)
    port: int = setting(5050, "Dispatcher port (role all/dispatcher; 0 "
                        "picks one).")
    worker_port: int = setting(5051, "Port of this host's worker (role "
                               "worker; 0 picks one). Role all picks free "
                               "ports for its workers.")
    workers: int = setting(2, "Workers to start (role all).")
    dispatcher: str | None = setting(None, "host:port of the dispatcher "
                                     "(role worker).")
    worker_address: str | None = setting(
        None, "Host name or IP at which trainers reach this worker (role "
        "worker; required when the dispatcher is on another host: the "
        "dispatcher hands this address to trainers).")

    def __post_init__(self):
        check_choices(self)
        check_values(self, [
            ("port", _port, "an integer in [0, 65536)"),
            ("worker_port", _port, "an integer in [0, 65536)"),
            ("workers", _at_least(1), "an integer >= 1")])
        if self.role != "worker":
            return
        if not self.dispatcher:
            raise ValueError("dispatcher=host:port is required for "
                             "role='worker'. Received: dispatcher=None")
        host, _, port = self.dispatcher.split("://")[-1].rpartition(":")
        if not self.worker_address and host not in _LOCAL_HOSTS:
            raise ValueError(
                "worker_address is required for a worker whose dispatcher is "
                "on another host: the host name or IP at which trainers reach "
                "this machine (else they are sent to 'localhost'). Received: "
                f"dispatcher={self.dispatcher!r}, worker_address=None")
        if host in _LOCAL_HOSTS and port == str(self.worker_port):
            raise ValueError(
                "worker_port must differ from the dispatcher's port on one "
                f"host. Received: worker_port={self.worker_port}")
