"""plugin/infer"""
