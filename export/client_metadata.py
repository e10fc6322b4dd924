"""Standard LiteRT Model Metadata in a .tflite: what MediaPipe Tasks' ImageClassifier, the TFLite
Task Library and Android Studio's ML Model Binding read (the `TFLITE_METADATA` ModelMetadata
flatbuffer, its label file packed into the model as a zip appended to it).

The metadata objects come from MediaPipe's own metadata writer parts (`metadata_info`: general
info, an image input with its normalisation, a classification output with its label file), built
from the project's metadata record, so the labels and the preprocessing have one source. The
packing is what MediaPipe's `MetadataPopulator` does (a model buffer named TFLITE_METADATA, the
label file as a zip after the flatbuffer); the populator itself cannot be imported from the pip
build of mediapipe (`mediapipe.tasks.cc` is missing), and neither can its `min_parser_version`
computation, so that field is left unset: MediaPipe and the Task Library load files without it.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

from train.common import ProjectError

TFLITE_METADATA = "TFLITE_METADATA"   # the name readers look up (MetadataPopulator.METADATA_FIELD_NAME)
LABEL_FILE = "labels.txt"
LICENSE = "MIT"


def model_metadata(model_buffer: bytes, record: dict):
    """The ModelMetadataT of a .tflite (its input and output types read from the model) for the
    project's metadata record: name, description, version, license, the image input (normalisation
    for a float input, none for the uint8 bitmap of an app form), the output with its labels."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_info, writer_utils
    classes, spec = record["classes"], record["preprocess"]
    size = spec["input_size"]
    framing = (f"the whole photo scaled to {size} x {size} px, aspect not kept (MediaPipe's default)" if spec["framing"] == "squash"
               else f"the centre {size} x {size} px crop after resizing the shorter side to {spec.get('resize_shorter_side')} px "
                    "(pass it as region_of_interest)")
    general = metadata_info.GeneralMd(
        name=record.get("name", "dog_emotion"), version=f"weights {record['weights_sha256'][:12]}",
        description=f"Image classifier of {len(classes)} classes ({', '.join(classes)}): a {record['params']:,}-parameter CNN "
                    f"trained from scratch; it reads {framing}.",
        author="the dog-emotion pipeline authors", licenses=LICENSE)
    input_type = writer_utils.get_input_tensor_types(model_buffer)[0]
    uint8_input = record.get("input_dtype") == "uint8"
    mean = [0.0, 0.0, 0.0] if uint8_input else [255 * m for m in spec["mean"]]
    std = [1.0, 1.0, 1.0] if uint8_input else [255 * s for s in spec["std"]]
    image = metadata_info.InputImageTensorMd(
        name=record["input_name"], description=f"RGB photo, {framing}",
        norm_mean=mean, norm_std=std, color_space_type=fb.ColorSpaceType.RGB, tensor_type=input_type)
    labels = metadata_info.LabelFileMd(file_path=LABEL_FILE)
    output = metadata_info.ClassificationTensorMd(
        name=record["output_name"], description=record["output"], label_files=[labels],
        tensor_type=writer_utils.get_output_tensor_types(model_buffer)[0])
    metadata = general.create_metadata()
    subgraph = fb.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [image.create_metadata()]
    subgraph.outputTensorMetadata = [output.create_metadata()]
    metadata.subgraphMetadata = [subgraph]
    return metadata


def label_file(classes: list[str]) -> bytes:
    """One class a line, in output order (TENSOR_AXIS_LABELS); a name with a line break would shift
    every label after it, so it is refused."""
    bad = [c for c in classes if "\n" in c or "\r" in c]
    if bad:
        raise ProjectError(f"class names {bad!r} hold a line break: a label file cannot carry them")
    return "".join(f"{c}\n" for c in classes).encode()


def add_client_metadata(model, model_buffer: bytes, record: dict, schema) -> bytes:
    """`model` (a schema ModelT of `model_buffer`) with the TFLITE_METADATA buffer set, packed, and
    the label file appended as a zip: the bytes of the finished .tflite."""
    import flatbuffers
    metadata_builder = flatbuffers.Builder(0)
    metadata_builder.Finish(model_metadata(model_buffer, record).Pack(metadata_builder), b"M001")
    buffer = schema.BufferT()
    buffer.data = list(metadata_builder.Output())
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = TFLITE_METADATA, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != TFLITE_METADATA.encode()] + [entry]
    builder = flatbuffers.Builder(len(model_buffer) + 8192)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    packed = io.BytesIO(bytes(builder.Output()))
    packed.seek(0, io.SEEK_END)
    with zipfile.ZipFile(packed, "a") as zf:   # after the flatbuffer, as MetadataPopulator packs associated files
        zf.writestr(LABEL_FILE, label_file(record["classes"]))
    return packed.getvalue()


def read_labels(path: Path) -> list[str]:
    """The label file packed in a .tflite (what MediaPipe names categories with)."""
    with zipfile.ZipFile(path) as zf:
        return zf.read(LABEL_FILE).decode().splitlines()
