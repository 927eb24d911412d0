"""A run's reports after training: curves, an evaluation, and exports."""

from tlfast import run_folder
from tlfast.progress import Phase


def finish_run(classifier, data, run, folder, timings, val_probs=None):
    """Curves, an evaluation from pixels, and the requested exports.

    Args:
      classifier: The trained model.
      data: The run's `tlfast.run_data.TrainingData`.
      run: The `tlfast.resolve.ResolvedRun`.
      folder: The `tlfast.run_folder.RunFolder` the reports go to.
      timings: Phase timings to add to.
      val_probs: The head's float32 [N, C] probabilities on the cached
        validation features, or None (evaluate from pixels).

    Returns:
      Entries for metrics.json: "evaluation" (accuracy from pixels, top-k,
      per-class scores; the full report is in evaluation.json) and "exports"
      (paths and parity per format).
    """
    from tlfast import evaluate
    from tlfast import plots

    config, report = run.config, {}
    plots.plot_training_curves(folder.file(run_folder.HISTORY),
                               folder.file(run_folder.CURVES))
    val_entries = data.validation.entries
    if val_entries is not None and data.label_names:
        with Phase("evaluate", total=len(val_entries), timings=timings):
            report["evaluation"] = _evaluate_multilabel(
                classifier, data, val_entries, run, folder, val_probs)
    elif val_entries is not None:
        with Phase("evaluate", total=len(val_entries), timings=timings):
            if val_probs is not None:
                # The frozen backbone's validation features are cached: the
                # head's predictions on them are the model's predictions.
                result = evaluate.report_from_probabilities(
                    val_probs, val_entries, data.class_names, folder.path,
                    metrics_file=run_folder.EVALUATION)
            else:
                result = evaluate.evaluate_model(
                    classifier, val_entries, data.class_names, folder.path,
                    batch_size=config.batch_size, resize=config.resize,
                    metrics_file=run_folder.EVALUATION)
        report["evaluation"] = {k: result[k] for k in (
            "accuracy", "top_k", "top_k_accuracy") if k in result}
        report["evaluation"]["per_class_recall"] = {
            name: scores["recall"]
            for name, scores in result.get("per_class", {}).items()}
    if config.export_formats:
        with Phase("export", timings=timings):
            report["exports"] = _export(classifier, data, run, folder,
                                        val_entries)
    return report


def _evaluate_multilabel(classifier, data, val_entries, run, folder, val_probs):
    """evaluation.json of a multi-label run; its summary for metrics.json."""
    from tlfast import multilabel
    from tlfast import predict

    if val_probs is None:
        val_probs, positions = predict.predict_entries(
            classifier, val_entries, resize=run.config.resize,
            batch_size=run.config.batch_size)
        val_entries = [val_entries[i] for i in positions]
    result = multilabel.write_report(
        val_probs, val_entries, data.label_matrix, data.label_names,
        folder.path, metrics_file=run_folder.EVALUATION)
    return {"threshold": result["threshold"], "accuracy": result["accuracy"],
            "exact_match": result["exact_match"],
            "micro_f1": result["micro_avg"]["f1"],
            "macro_f1": result["macro_avg"]["f1"],
            "per_label_f1": {name: s["f1"]
                             for name, s in result["per_class"].items()}}


def _export(classifier, data, run, folder, val_entries):
    from tlfast import export

    representative = validation = None
    train_entries, size = data.train.entries, run.image_size
    if train_entries is not None:
        representative = export.decode_entries(
            train_entries, size, run.config.resize, limit=100)[0]
        # Capped: decoded pixels of a large validation set would not fit in
        # memory; evenly spaced, every class is there.
        validation = export.decode_entries(
            val_entries, size, run.config.resize,
            limit=export.PARITY_IMAGES)
        if data.label_names:
            # Label-set indices are not outputs: no accuracy, parity only.
            validation = validation[0]
    return export.export_model(
        classifier, run.config.export_formats, folder.file("export"),
        class_names=data.outputs, representative=representative,
        validation=validation, batch_size=run.config.batch_size)
