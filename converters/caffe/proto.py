"""The subset of Caffe's message schema that nstzoo reads, built at import time without ``protoc``.

Field names and numbers are facts of Caffe's text and wire formats (BVLC Caffe's ``caffe.proto``). The
subset covers the network description, the weight blobs, the parameters of the layers nstzoo converts,
and the data-layer parameters that give an input shape. Fields outside the subset are rejected by the
text parser, which ``converters.caffe.reader`` turns into an error naming the field.

``FastBlob`` is a second view of ``BlobProto`` that declares the float data (field 5) as ``bytes``: when the
data is packed, protobuf hands over the raw little-endian bytes for ``numpy.frombuffer``.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "caffe"
FIELD = descriptor_pb2.FieldDescriptorProto

# Scalar type names used in the tables below.
TYPES = {
    "int32": FIELD.TYPE_INT32, "int64": FIELD.TYPE_INT64, "uint32": FIELD.TYPE_UINT32,
    "float": FIELD.TYPE_FLOAT, "double": FIELD.TYPE_DOUBLE, "bool": FIELD.TYPE_BOOL,
    "string": FIELD.TYPE_STRING, "bytes": FIELD.TYPE_BYTES,
}

# Enums: "Message.Enum" nests the enum in that message, as Caffe does, so that value names such as MAX
# or DEFAULT do not clash. A name without a dot is at file scope.
ENUMS = {
    "Phase": [("TRAIN", 0), ("TEST", 1)],
    "PoolingParameter.PoolMethod": [("MAX", 0), ("AVE", 1), ("STOCHASTIC", 2)],
    "PoolingParameter.RoundMode": [("CEIL", 0), ("FLOOR", 1)],
    "PoolingParameter.Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
    "LRNParameter.NormRegion": [("ACROSS_CHANNELS", 0), ("WITHIN_CHANNEL", 1)],
    "LRNParameter.Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
    "EltwiseParameter.EltwiseOp": [("PROD", 0), ("SUM", 1), ("MAX", 2)],
    "ConvolutionParameter.Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
    "ReLUParameter.Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
    "SigmoidParameter.Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
    "SoftmaxParameter.Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
    "TanHParameter.Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
    "ParamSpec.DimCheckMode": [("STRICT", 0), ("PERMISSIVE", 1)],
    "FillerParameter.VarianceNorm": [("FAN_IN", 0), ("FAN_OUT", 1), ("AVERAGE", 2)],
    "DataParameter.DB": [("LEVELDB", 0), ("LMDB", 1)],
    "V1LayerParameter.LayerType": [
        ("NONE", 0), ("ABSVAL", 35), ("ACCURACY", 1), ("ARGMAX", 30), ("BNLL", 2), ("CONCAT", 3),
        ("CONTRASTIVE_LOSS", 37), ("CONVOLUTION", 4), ("DATA", 5), ("DECONVOLUTION", 39), ("DROPOUT", 6),
        ("DUMMY_DATA", 32), ("EUCLIDEAN_LOSS", 7), ("ELTWISE", 25), ("EXP", 38), ("FLATTEN", 8),
        ("HDF5_DATA", 9), ("HDF5_OUTPUT", 10), ("HINGE_LOSS", 28), ("IM2COL", 11), ("IMAGE_DATA", 12),
        ("INFOGAIN_LOSS", 13), ("INNER_PRODUCT", 14), ("LRN", 15), ("MEMORY_DATA", 29),
        ("MULTINOMIAL_LOGISTIC_LOSS", 16), ("MVN", 34), ("POOLING", 17), ("POWER", 26), ("RELU", 18),
        ("SIGMOID", 19), ("SIGMOID_CROSS_ENTROPY_LOSS", 27), ("SILENCE", 36), ("SOFTMAX", 20),
        ("SOFTMAX_LOSS", 21), ("SPLIT", 22), ("SLICE", 33), ("TANH", 23), ("WINDOW_DATA", 24),
        ("THRESHOLD", 31),
    ],
}

# V1 layer type enum -> the V2 type string, as Caffe's upgrade maps them.
V1_TYPE_NAMES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL", "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution", "DATA": "Data",
    "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN", "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

# Messages: name -> [(field name, number, type, label, default)]. The label is "opt", "rep" (repeated) or
# "packed" (repeated, packed on the wire). A type that is not a scalar names a message or an enum.
MESSAGES: dict[str, list[tuple]] = {
    "BlobShape": [("dim", 1, "int64", "packed", None)],
    "BlobProto": [
        ("shape", 7, "BlobShape", "opt", None),
        ("data", 5, "float", "packed", None),
        ("diff", 6, "float", "packed", None),
        ("double_data", 8, "double", "packed", None),
        ("double_diff", 9, "double", "packed", None),
        ("num", 1, "int32", "opt", 0),
        ("channels", 2, "int32", "opt", 0),
        ("height", 3, "int32", "opt", 0),
        ("width", 4, "int32", "opt", 0),
    ],
    # BlobProto with the float data left as raw bytes (see the module docstring).
    "FastBlob": [
        ("shape", 7, "BlobShape", "opt", None),
        ("data", 5, "bytes", "opt", None),
        ("num", 1, "int32", "opt", 0),
        ("channels", 2, "int32", "opt", 0),
        ("height", 3, "int32", "opt", 0),
        ("width", 4, "int32", "opt", 0),
    ],
    "BlobProtoVector": [("blobs", 1, "BlobProto", "rep", None)],
    "NetState": [
        ("phase", 1, "Phase", "opt", "TEST"),
        ("level", 2, "int32", "opt", 0),
        ("stage", 3, "string", "rep", None),
    ],
    "NetStateRule": [
        ("phase", 1, "Phase", "opt", None),
        ("min_level", 2, "int32", "opt", None),
        ("max_level", 3, "int32", "opt", None),
        ("stage", 4, "string", "rep", None),
        ("not_stage", 5, "string", "rep", None),
    ],
    "ParamSpec": [
        ("name", 1, "string", "opt", None),
        ("share_mode", 2, "ParamSpec.DimCheckMode", "opt", None),
        ("lr_mult", 3, "float", "opt", 1.0),
        ("decay_mult", 4, "float", "opt", 1.0),
    ],
    "FillerParameter": [
        ("type", 1, "string", "opt", "constant"),
        ("value", 2, "float", "opt", 0.0),
        ("min", 3, "float", "opt", 0.0),
        ("max", 4, "float", "opt", 1.0),
        ("mean", 5, "float", "opt", 0.0),
        ("std", 6, "float", "opt", 1.0),
        ("sparse", 7, "int32", "opt", -1),
        ("variance_norm", 8, "FillerParameter.VarianceNorm", "opt", "FAN_IN"),
    ],
    "NetParameter": [
        ("name", 1, "string", "opt", None),
        ("input", 3, "string", "rep", None),
        ("input_shape", 8, "BlobShape", "rep", None),
        ("input_dim", 4, "int32", "rep", None),
        ("force_backward", 5, "bool", "opt", False),
        ("state", 6, "NetState", "opt", None),
        ("debug_info", 7, "bool", "opt", False),
        ("layer", 100, "LayerParameter", "rep", None),
        ("layers", 2, "V1LayerParameter", "rep", None),
    ],
    # The network as the weight reader sees it: names, types and blobs only.
    "FastNet": [
        ("name", 1, "string", "opt", None),
        ("layer", 100, "FastLayer", "rep", None),
        ("layers", 2, "FastV1Layer", "rep", None),
    ],
    "FastLayer": [
        ("name", 1, "string", "opt", None),
        ("type", 2, "string", "opt", None),
        ("blobs", 7, "FastBlob", "rep", None),
    ],
    "FastV1Layer": [
        ("name", 4, "string", "opt", None),
        ("type", 5, "V1LayerParameter.LayerType", "opt", None),
        ("blobs", 6, "FastBlob", "rep", None),
    ],
    "TransformationParameter": [
        ("scale", 1, "float", "opt", 1.0),
        ("mirror", 2, "bool", "opt", False),
        ("crop_size", 3, "uint32", "opt", 0),
        ("mean_file", 4, "string", "opt", None),
        ("mean_value", 5, "float", "rep", None),
        ("force_color", 6, "bool", "opt", False),
        ("force_gray", 7, "bool", "opt", False),
    ],
    "LossParameter": [
        ("ignore_label", 1, "int32", "opt", None),
        ("normalize", 2, "bool", "opt", None),
    ],
    "AccuracyParameter": [
        ("top_k", 1, "uint32", "opt", 1),
        ("axis", 2, "int32", "opt", 1),
        ("ignore_label", 3, "int32", "opt", None),
    ],
    "BatchNormParameter": [
        ("use_global_stats", 1, "bool", "opt", None),
        ("moving_average_fraction", 2, "float", "opt", 0.999),
        ("eps", 3, "float", "opt", 1e-5),
    ],
    "BiasParameter": [
        ("axis", 1, "int32", "opt", 1),
        ("num_axes", 2, "int32", "opt", 1),
        ("filler", 3, "FillerParameter", "opt", None),
    ],
    "ConcatParameter": [
        ("axis", 2, "int32", "opt", 1),
        ("concat_dim", 1, "uint32", "opt", 1),
    ],
    "ConvolutionParameter": [
        ("num_output", 1, "uint32", "opt", None),
        ("bias_term", 2, "bool", "opt", True),
        ("pad", 3, "uint32", "rep", None),
        ("kernel_size", 4, "uint32", "rep", None),
        ("stride", 6, "uint32", "rep", None),
        ("dilation", 18, "uint32", "rep", None),
        ("pad_h", 9, "uint32", "opt", 0),
        ("pad_w", 10, "uint32", "opt", 0),
        ("kernel_h", 11, "uint32", "opt", None),
        ("kernel_w", 12, "uint32", "opt", None),
        ("stride_h", 13, "uint32", "opt", None),
        ("stride_w", 14, "uint32", "opt", None),
        ("group", 5, "uint32", "opt", 1),
        ("weight_filler", 7, "FillerParameter", "opt", None),
        ("bias_filler", 8, "FillerParameter", "opt", None),
        ("engine", 15, "Engine", "opt", "DEFAULT"),
        ("axis", 16, "int32", "opt", 1),
        ("force_nd_im2col", 17, "bool", "opt", False),
    ],
    "CropParameter": [
        ("axis", 1, "int32", "opt", 2),
        ("offset", 2, "uint32", "rep", None),
    ],
    "DataParameter": [
        ("source", 1, "string", "opt", None),
        ("batch_size", 4, "uint32", "opt", None),
        ("rand_skip", 7, "uint32", "opt", 0),
        ("backend", 8, "DataParameter.DB", "opt", "LEVELDB"),
        ("scale", 2, "float", "opt", 1.0),
        ("mean_file", 3, "string", "opt", None),
        ("crop_size", 5, "uint32", "opt", 0),
        ("mirror", 6, "bool", "opt", False),
        ("force_encoded_color", 9, "bool", "opt", False),
        ("prefetch", 10, "uint32", "opt", 4),
    ],
    "DropoutParameter": [("dropout_ratio", 1, "float", "opt", 0.5)],
    "EltwiseParameter": [
        ("operation", 1, "EltwiseParameter.EltwiseOp", "opt", "SUM"),
        ("coeff", 2, "float", "rep", None),
        ("stable_prod_grad", 3, "bool", "opt", True),
    ],
    "ELUParameter": [("alpha", 1, "float", "opt", 1.0)],
    "FlattenParameter": [
        ("axis", 1, "int32", "opt", 1),
        ("end_axis", 2, "int32", "opt", -1),
    ],
    "ImageDataParameter": [
        ("source", 1, "string", "opt", None),
        ("batch_size", 4, "uint32", "opt", 1),
        ("new_height", 9, "uint32", "opt", 0),
        ("new_width", 10, "uint32", "opt", 0),
        ("is_color", 11, "bool", "opt", True),
        ("crop_size", 5, "uint32", "opt", 0),
        ("mean_file", 3, "string", "opt", None),
        ("scale", 2, "float", "opt", 1.0),
        ("mirror", 6, "bool", "opt", False),
        ("shuffle", 8, "bool", "opt", False),
        ("rand_skip", 7, "uint32", "opt", 0),
        ("root_folder", 12, "string", "opt", ""),
    ],
    "InnerProductParameter": [
        ("num_output", 1, "uint32", "opt", None),
        ("bias_term", 2, "bool", "opt", True),
        ("weight_filler", 3, "FillerParameter", "opt", None),
        ("bias_filler", 4, "FillerParameter", "opt", None),
        ("axis", 5, "int32", "opt", 1),
        ("transpose", 6, "bool", "opt", False),
    ],
    "InputParameter": [("shape", 1, "BlobShape", "rep", None)],
    "LRNParameter": [
        ("local_size", 1, "uint32", "opt", 5),
        ("alpha", 2, "float", "opt", 1.0),
        ("beta", 3, "float", "opt", 0.75),
        ("norm_region", 4, "LRNParameter.NormRegion", "opt", "ACROSS_CHANNELS"),
        ("k", 5, "float", "opt", 1.0),
        ("engine", 6, "Engine", "opt", "DEFAULT"),
    ],
    "MemoryDataParameter": [
        ("batch_size", 1, "uint32", "opt", None),
        ("channels", 2, "uint32", "opt", None),
        ("height", 3, "uint32", "opt", None),
        ("width", 4, "uint32", "opt", None),
    ],
    "PoolingParameter": [
        ("pool", 1, "PoolingParameter.PoolMethod", "opt", "MAX"),
        ("pad", 4, "uint32", "opt", 0),
        ("pad_h", 9, "uint32", "opt", 0),
        ("pad_w", 10, "uint32", "opt", 0),
        ("kernel_size", 2, "uint32", "opt", None),
        ("kernel_h", 5, "uint32", "opt", None),
        ("kernel_w", 6, "uint32", "opt", None),
        ("stride", 3, "uint32", "opt", 1),
        ("stride_h", 7, "uint32", "opt", None),
        ("stride_w", 8, "uint32", "opt", None),
        ("engine", 11, "Engine", "opt", "DEFAULT"),
        ("global_pooling", 12, "bool", "opt", False),
        ("round_mode", 13, "PoolingParameter.RoundMode", "opt", "CEIL"),
    ],
    "PowerParameter": [
        ("power", 1, "float", "opt", 1.0),
        ("scale", 2, "float", "opt", 1.0),
        ("shift", 3, "float", "opt", 0.0),
    ],
    "PReLUParameter": [
        ("filler", 1, "FillerParameter", "opt", None),
        ("channel_shared", 2, "bool", "opt", False),
    ],
    "ReLUParameter": [
        ("negative_slope", 1, "float", "opt", 0.0),
        ("engine", 2, "Engine", "opt", "DEFAULT"),
    ],
    "ReshapeParameter": [
        ("shape", 1, "BlobShape", "opt", None),
        ("axis", 2, "int32", "opt", 0),
        ("num_axes", 3, "int32", "opt", -1),
    ],
    "ScaleParameter": [
        ("axis", 1, "int32", "opt", 1),
        ("num_axes", 2, "int32", "opt", 1),
        ("filler", 3, "FillerParameter", "opt", None),
        ("bias_term", 4, "bool", "opt", False),
        ("bias_filler", 5, "FillerParameter", "opt", None),
    ],
    "SigmoidParameter": [("engine", 1, "Engine", "opt", "DEFAULT")],
    "SliceParameter": [
        ("axis", 3, "int32", "opt", 1),
        ("slice_point", 2, "uint32", "rep", None),
        ("slice_dim", 1, "uint32", "opt", 1),
    ],
    "SoftmaxParameter": [
        ("engine", 1, "Engine", "opt", "DEFAULT"),
        ("axis", 2, "int32", "opt", 1),
    ],
    "TanHParameter": [("engine", 1, "Engine", "opt", "DEFAULT")],
    "LayerParameter": [
        ("name", 1, "string", "opt", None),
        ("type", 2, "string", "opt", None),
        ("bottom", 3, "string", "rep", None),
        ("top", 4, "string", "rep", None),
        ("phase", 10, "Phase", "opt", None),
        ("loss_weight", 5, "float", "rep", None),
        ("param", 6, "ParamSpec", "rep", None),
        ("blobs", 7, "BlobProto", "rep", None),
        ("propagate_down", 11, "bool", "rep", None),
        ("include", 8, "NetStateRule", "rep", None),
        ("exclude", 9, "NetStateRule", "rep", None),
        ("transform_param", 100, "TransformationParameter", "opt", None),
        ("loss_param", 101, "LossParameter", "opt", None),
        ("accuracy_param", 102, "AccuracyParameter", "opt", None),
        ("batch_norm_param", 139, "BatchNormParameter", "opt", None),
        ("bias_param", 141, "BiasParameter", "opt", None),
        ("concat_param", 104, "ConcatParameter", "opt", None),
        ("convolution_param", 106, "ConvolutionParameter", "opt", None),
        ("crop_param", 144, "CropParameter", "opt", None),
        ("data_param", 107, "DataParameter", "opt", None),
        ("dropout_param", 108, "DropoutParameter", "opt", None),
        ("eltwise_param", 110, "EltwiseParameter", "opt", None),
        ("elu_param", 140, "ELUParameter", "opt", None),
        ("flatten_param", 135, "FlattenParameter", "opt", None),
        ("image_data_param", 115, "ImageDataParameter", "opt", None),
        ("inner_product_param", 117, "InnerProductParameter", "opt", None),
        ("input_param", 143, "InputParameter", "opt", None),
        ("lrn_param", 118, "LRNParameter", "opt", None),
        ("memory_data_param", 119, "MemoryDataParameter", "opt", None),
        ("pooling_param", 121, "PoolingParameter", "opt", None),
        ("power_param", 122, "PowerParameter", "opt", None),
        ("prelu_param", 131, "PReLUParameter", "opt", None),
        ("relu_param", 123, "ReLUParameter", "opt", None),
        ("reshape_param", 133, "ReshapeParameter", "opt", None),
        ("scale_param", 142, "ScaleParameter", "opt", None),
        ("sigmoid_param", 124, "SigmoidParameter", "opt", None),
        ("softmax_param", 125, "SoftmaxParameter", "opt", None),
        ("slice_param", 126, "SliceParameter", "opt", None),
        ("tanh_param", 127, "TanHParameter", "opt", None),
    ],
    "V1LayerParameter": [
        ("bottom", 2, "string", "rep", None),
        ("top", 3, "string", "rep", None),
        ("name", 4, "string", "opt", None),
        ("include", 32, "NetStateRule", "rep", None),
        ("exclude", 33, "NetStateRule", "rep", None),
        ("type", 5, "V1LayerParameter.LayerType", "opt", None),
        ("blobs", 6, "BlobProto", "rep", None),
        ("blobs_lr", 7, "float", "rep", None),
        ("weight_decay", 8, "float", "rep", None),
        ("loss_weight", 35, "float", "rep", None),
        ("accuracy_param", 27, "AccuracyParameter", "opt", None),
        ("concat_param", 9, "ConcatParameter", "opt", None),
        ("convolution_param", 10, "ConvolutionParameter", "opt", None),
        ("data_param", 11, "DataParameter", "opt", None),
        ("dropout_param", 12, "DropoutParameter", "opt", None),
        ("eltwise_param", 24, "EltwiseParameter", "opt", None),
        ("image_data_param", 15, "ImageDataParameter", "opt", None),
        ("inner_product_param", 17, "InnerProductParameter", "opt", None),
        ("lrn_param", 18, "LRNParameter", "opt", None),
        ("memory_data_param", 22, "MemoryDataParameter", "opt", None),
        ("pooling_param", 19, "PoolingParameter", "opt", None),
        ("power_param", 21, "PowerParameter", "opt", None),
        ("relu_param", 30, "ReLUParameter", "opt", None),
        ("sigmoid_param", 38, "SigmoidParameter", "opt", None),
        ("softmax_param", 39, "SoftmaxParameter", "opt", None),
        ("slice_param", 31, "SliceParameter", "opt", None),
        ("tanh_param", 37, "TanHParameter", "opt", None),
        ("transform_param", 36, "TransformationParameter", "opt", None),
        ("loss_param", 42, "LossParameter", "opt", None),
    ],
}


def _add_field(message: descriptor_pb2.DescriptorProto, owner: str, spec: tuple) -> None:
    name, number, type_name, label, default = spec
    field = message.field.add(name=name, number=number)
    field.label = FIELD.LABEL_OPTIONAL if label == "opt" else FIELD.LABEL_REPEATED
    if label == "packed":
        field.options.packed = True
    if f"{owner}.{type_name}" in ENUMS:  # an enum nested in this message, such as Engine
        type_name = f"{owner}.{type_name}"
    if type_name in TYPES:
        field.type = TYPES[type_name]
    elif type_name in ENUMS:
        field.type = FIELD.TYPE_ENUM
        field.type_name = f".{PACKAGE}.{type_name}"
    else:
        field.type = FIELD.TYPE_MESSAGE
        field.type_name = f".{PACKAGE}.{type_name}"
    if default is not None and label == "opt" and type_name != "bytes":
        if isinstance(default, bool):
            field.default_value = "true" if default else "false"
        else:
            field.default_value = str(default)


def _build_file() -> descriptor_pb2.FileDescriptorProto:
    file_proto = descriptor_pb2.FileDescriptorProto(name="nstzoo_caffe_subset.proto", package=PACKAGE, syntax="proto2")
    messages = {}
    for message_name, fields in MESSAGES.items():
        message = file_proto.message_type.add(name=message_name)
        messages[message_name] = message
        for spec in fields:
            _add_field(message, message_name, spec)
    for enum_path, values in ENUMS.items():
        owner, _, enum_name = enum_path.rpartition(".")
        scope = messages[owner].enum_type if owner else file_proto.enum_type
        enum = scope.add(name=enum_name)
        for value_name, number in values:
            enum.value.add(name=value_name, number=number)
    return file_proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_build_file())


def message_class(name: str) -> type:
    """Return the generated message class for ``caffe.<name>``."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


NetParameter = message_class("NetParameter")
LayerParameter = message_class("LayerParameter")
V1LayerParameter = message_class("V1LayerParameter")
BlobProto = message_class("BlobProto")
BlobShape = message_class("BlobShape")
FastBlob = message_class("FastBlob")
FastLayer = message_class("FastLayer")
FastV1Layer = message_class("FastV1Layer")


def v1_type_name(number: int) -> str:
    """Return the V2 type string of V1 layer type enum value ``number``, or ``V1 type <number>``."""
    enum = _POOL.FindEnumTypeByName(f"{PACKAGE}.V1LayerParameter.LayerType")
    value = enum.values_by_number.get(number)
    if value is None:
        return f"V1 type {number}"
    return V1_TYPE_NAMES.get(value.name, value.name)
