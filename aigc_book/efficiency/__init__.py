"""Efficiency: measuring time (and, from chapter 6 on, compute, memory and money)."""
