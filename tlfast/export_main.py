r"""tlfast-export: export a trained model to serving formats, parity-checked.

    tlfast-export --model=runs/photos/model.keras --output_dir=runs/photos/export \
        --formats=keras,saved_model,tflite,tflite_int8

Calibration images for tflite_int8 (--num_representative training images)
and the parity-check images (the validation split) are read from the run's
data folder (run.json) with its split.csv; pass --data_dir when the data has
moved. Without data, float formats are exported unchecked and tflite_int8
is refused. See `tlfast.export` for the formats and the checks. The flags
are `tlfast.config.ExportConfig`'s fields; the work is `tlfast.run_export`.
"""

import json

from tlfast import cli
from tlfast import config

cli.define_flags(config.ExportConfig)


def export(export_config):
    from tlfast import export as export_lib

    report = export_lib.run_export(export_config)
    print(json.dumps(report, indent=1, sort_keys=True))
    return cli.exit_status("tlfast-export", export_lib.problems(report))


def run():
    """Console-script entry point."""
    cli.run_script("tlfast-export", config.ExportConfig, export)


if __name__ == "__main__":
    run()
