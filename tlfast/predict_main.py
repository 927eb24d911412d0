r"""tlfast-predict: top-k predictions of a trained model for image files.

    tlfast-predict --model=runs/photos/model.keras --images=new_photos/ \
        --output=preds.csv --top_k=3

--images is a folder (searched recursively), a glob pattern (quote it;
`**` recurses) or one file. The CSV has one row per usable image: path,
label_1, prob_1, ..., label_k, prob_k. Files that are not usable images
(unreadable, not an image, corrupt, placeholder graphics) get no row: each
is reported on stderr as "skipped: <path>: <reason>", and listed with its
reason in <output>.skipped.csv when there are any. The flags are
`tlfast.config.PredictConfig`'s fields; the work is `tlfast.run_prediction`.
"""

from tlfast import cli
from tlfast import config

cli.define_flags(config.PredictConfig)


def predict(predict_config):
    from tlfast import predict as predict_lib

    rows, skipped, skipped_csv = predict_lib.run_prediction(predict_config)
    print(f"predicted={len(rows)} skipped={len(skipped)} "
          f"output={predict_config.output}"
          + (f" skipped_list={skipped_csv}" if skipped_csv else ""))
    return 0


def run():
    """Console-script entry point."""
    cli.run_script("tlfast-predict", config.PredictConfig, predict)


if __name__ == "__main__":
    run()
