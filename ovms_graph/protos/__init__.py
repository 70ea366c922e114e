"""Generated protobuf modules (tools/gen_protos.py); do not edit."""
