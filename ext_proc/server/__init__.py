"""The I/O shell around the core: gRPC servicer, protobuf codec, effects, worker processes."""
