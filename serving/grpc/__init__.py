"""The Open Inference Protocol over gRPC (KServe v2 `inference.GRPCInferenceService`), served by every gunicorn
worker of a replica beside its HTTP routes, through the same prediction function (serving/predict.py).

The messages and stubs are tritonclient's generated `tritonclient.grpc.service_pb2` / `service_pb2_grpc`
(tritonclient==2.73.0, built for the pinned protobuf and grpcio): Triton's `grpc_service.proto` is KServe's
`grpc_predict_v2.proto` plus Triton's extensions, in the same package `inference` with the same messages, so
`tritonclient.grpc` and any KServe v2 stub talk to it unchanged. Nothing is generated or checked in here.
"""
