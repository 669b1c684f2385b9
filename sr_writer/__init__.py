"""sr_writer"""
