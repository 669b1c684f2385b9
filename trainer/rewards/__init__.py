"""trainer/rewards"""
