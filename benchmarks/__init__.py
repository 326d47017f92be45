"""Speed, memory, parameter and accuracy measurements of ProtoSeg against SegFormer: `python -m benchmarks.<name>`."""
