"""TFLite model metadata: labels, input format and a description inside the .tflite.

The TFLite Task Library, MediaPipe and Android Studio read a classifier's
labels and input normalisation from metadata in the model file (what Model
Maker writes), not from a labels.txt beside it. The official writer
(`tflite_support.metadata_writers`) pins protobuf < 4, which TensorFlow 2.21
cannot run with, so the same format is written here from its published
schema (tensorflow/tflite-support, `metadata_schema.fbs`, version 1.5.0):

    model.tflite = [TFLite flatbuffer                      ] + [zip archive]
                    Model.metadata += {"TFLITE_METADATA":        labels.txt
                                       buffer = ModelMetadata}
    ModelMetadata "M001"
      name, description, version, author, license, min_parser_version
      subgraph_metadata[0]
        input_tensor_metadata[0]   "image": ImageProperties(RGB),
                                   NormalizationOptions(mean 0, std 1),
                                   Stats(0..255)
        output_tensor_metadata[0]  "probability": FeatureProperties,
                                   Stats(0..1), associated file labels.txt
                                   (TENSOR_AXIS_LABELS)

The model takes uint8 pixels and normalises them inside (its first layers),
so the input's normalisation is the identity (mean 0, std 1), as Model
Maker writes for its uint8-input models. Associated files are a zip archive
appended to the flatbuffer, as `tflite_support.metadata.MetadataPopulator`
does: TFLite ignores the trailing bytes; zip readers find the archive from
its end.
"""

import io
import zipfile

import flatbuffers
from flatbuffers import table as fb_table

METADATA_NAME = "TFLITE_METADATA"
_IDENTIFIER = b"M001"
# Nothing newer than the first schema is used.
MIN_PARSER_VERSION = "1.0.0"
LABELS_FILE = "labels.txt"
_TENSOR_AXIS_LABELS = 2  # AssociatedFileType.
_RGB = 1  # ColorSpaceType.
# Union type tags: ContentProperties and ProcessUnitOptions.
_FEATURE_PROPERTIES, _IMAGE_PROPERTIES, _NORMALIZATION = 1, 2, 1


class _Writer:
    """Builds tables of the metadata schema (fields by slot, as declared)."""

    def __init__(self):
        self.b = flatbuffers.Builder(1024)

    def table(self, fields):
        """fields: [(slot, kind, value)]; kind "offset", "byte" or "uint"."""
        self.b.StartObject(max((slot for slot, _, _ in fields), default=-1) + 1)
        for slot, kind, value in fields:
            if value is None:
                continue
            if kind == "offset":
                self.b.PrependUOffsetTRelativeSlot(slot, value, 0)
            elif kind == "byte":
                self.b.PrependUint8Slot(slot, value, 0)
            else:
                self.b.PrependUint32Slot(slot, value, 0)
        return self.b.EndObject()

    def string(self, text):
        return None if text is None else self.b.CreateString(text)

    def offsets(self, items):
        self.b.StartVector(4, len(items), 4)
        for item in reversed(items):
            self.b.PrependUOffsetTRelative(item)
        return self.b.EndVector()

    def floats(self, values):
        self.b.StartVector(4, len(values), 4)
        for value in reversed(values):
            self.b.PrependFloat32(value)
        return self.b.EndVector()

    def stats(self, low, high):
        return self.table([(0, "offset", self.floats([high])),
                           (1, "offset", self.floats([low]))])


def metadata_buffer(*, name, description, image_size, version="1",
                    author="tlfast", license=None):
    """The ModelMetadata flatbuffer (file identifier "M001") of a classifier.

    Args:
      name, description, version, author, license: The model's strings.
      image_size: S of the uint8 [1, S, S, 3] input.
    """
    w = _Writer()
    labels = w.table([(0, "offset", w.string(LABELS_FILE)),
                      (1, "offset", w.string("Labels of the output's "
                                             "columns, one a line.")),
                      (2, "byte", _TENSOR_AXIS_LABELS)])
    size = w.table([(0, "uint", image_size), (1, "uint", image_size)])
    image_props = w.table([(0, "byte", _RGB), (1, "offset", size)])
    image_content = w.table([(0, "byte", _IMAGE_PROPERTIES),
                             (1, "offset", image_props)])
    norm = w.table([(0, "offset", w.floats([0.0])),
                    (1, "offset", w.floats([1.0]))])
    unit = w.table([(0, "byte", _NORMALIZATION), (1, "offset", norm)])
    image = w.table([
        (0, "offset", w.string("image")),
        (1, "offset", w.string(
            f"RGB image, uint8 pixels 0-255, {image_size} x {image_size}: the "
            "model resizes nothing and normalises inside.")),
        (3, "offset", image_content), (4, "offset", w.offsets([unit])),
        (5, "offset", w.stats(0.0, 255.0))])
    feature_props = w.table([])
    prob_content = w.table([(0, "byte", _FEATURE_PROPERTIES),
                            (1, "offset", feature_props)])
    probability = w.table([
        (0, "offset", w.string("probability")),
        (1, "offset", w.string("Probabilities of the labels (float32).")),
        (3, "offset", prob_content), (5, "offset", w.stats(0.0, 1.0)),
        (6, "offset", w.offsets([labels]))])
    subgraph = w.table([(2, "offset", w.offsets([image])),
                        (3, "offset", w.offsets([probability]))])
    fields = [(0, "offset", w.string(name)),
              (1, "offset", w.string(description)),
              (2, "offset", w.string(version)),
              (3, "offset", w.offsets([subgraph])),
              (4, "offset", w.string(author)),
              (5, "offset", w.string(license)),
              (7, "offset", w.string(MIN_PARSER_VERSION))]
    root = w.table(fields)
    w.b.Finish(root, file_identifier=_IDENTIFIER)
    return bytes(w.b.Output())


def populate(flatbuffer, labels, *, name, description, image_size):
    """A .tflite file's bytes with metadata and labels.txt inside.

    Args:
      flatbuffer: The converter's model bytes (without metadata).
      labels: The output's label names, in column order.
      name, description: The model's.
      image_size: S of the uint8 [1, S, S, 3] input.

    Returns:
      bytes: the model with a "TFLITE_METADATA" buffer, and a zip archive
      holding labels.txt appended.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    model.metadata = [m for m in (model.metadata or [])
                      if m.name.decode() != METADATA_NAME]
    buffer = schema.BufferT()
    buffer.data = list(metadata_buffer(name=name, description=description,
                                       image_size=image_size))
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata.append(entry)
    builder = flatbuffers.Builder(len(flatbuffer) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out = io.BytesIO(bytes(builder.Output()))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a") as archive:
        archive.writestr(LABELS_FILE, "\n".join(labels) + "\n")
    return out.getvalue()


def _string(t, slot):
    offset = t.Offset(4 + 2 * slot)
    return t.String(offset + t.Pos).decode("utf-8") if offset else None


def _tables(t, slot):
    offset = t.Offset(4 + 2 * slot)
    if not offset:
        return []
    start, n = t.Vector(offset), t.VectorLen(offset)
    return [fb_table.Table(t.Bytes, t.Indirect(start + 4 * i)) for i in range(n)]


def read(data):
    """What `populate` wrote, read back from a .tflite file's bytes.

    Returns:
      {"name", "description", "min_parser_version", "output_files":
      [(name, type)], "labels": [str]}, or None without metadata.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(data, 0)
    for i in range(model.MetadataLength()):
        if model.Metadata(i).Name().decode() == METADATA_NAME:
            raw = model.Buffers(model.Metadata(i).Buffer()).DataAsNumpy().tobytes()
            break
    else:
        return None
    root = fb_table.Table(raw, flatbuffers.encode.Get(
        flatbuffers.packer.uoffset, raw, 0))
    output = _tables(_tables(root, 3)[0], 3)[0]
    files = [(_string(f, 0), f.Get(flatbuffers.number_types.Uint8Flags,
                                    f.Offset(8) + f.Pos) if f.Offset(8) else 0)
             for f in _tables(output, 6)]
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        labels = archive.read(LABELS_FILE).decode("utf-8").splitlines()
    return {"name": _string(root, 0), "description": _string(root, 1),
            "min_parser_version": _string(root, 7),
            "buffer_identifier": raw[4:8].decode("ascii"),
            "output_files": files, "labels": labels}
