"""trainer/synth"""
