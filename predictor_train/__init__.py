"""Predictor training and dReLU conversion with torch (installed as turbosparse.predictor_train; `train` extra)."""
