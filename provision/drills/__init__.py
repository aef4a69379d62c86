"""Fault drills: a recorded history of requests under a fault, its checker and its report."""
