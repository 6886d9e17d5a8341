"""Benchmarks: turbosparse beside llama.cpp, and the synthetic models they run on."""
