# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [raw]
# # ASSIGNMENT CONFIG
# name: 99_tiny
# init_cell: true
# check_all_cell: false
# export_cell: false
# solutions_pdf: false
# generate: true
# tests:
#   files: false

# %% [markdown]
# # A tiny assignment that tests the grading machinery (tests/test_assignments.py)

# %%
import math

# %% [raw]
# # BEGIN QUESTION
# name: ex1
# points: 2

# %% [markdown]
# **Exercise 1.** Set `square` to 3 squared and `root` to the square root of 2.

# %% [raw]
# # BEGIN SOLUTION

# %%
square = 3**2  # SOLUTION
root = math.sqrt(2)  # SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert square == 9, "square should be 9"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert abs(root * root - 2) < 1e-12, "root squared should be 2"

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex2
# points: 2

# %% [markdown]
# **Exercise 2.** Write `double(x)` that returns twice `x`.

# %% [raw]
# # BEGIN SOLUTION

# %%
def double(x):
    # BEGIN SOLUTION
    return 2 * x
    # END SOLUTION


# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert double(2) == 4, "double(2) should be 4"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert double(-1.5) == -3.0, "double(-1.5) should be -3.0"

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex3
# manual: true
# points: 1

# %% [markdown]
# **Exercise 3.** *(open: graded by hand)* Why is the square root of 2 irrational?

# %% [raw]
# # BEGIN SOLUTION

# %% [markdown]
# If p/q in lowest terms squared to 2, p would be even, then q would be even too.

# %% [raw]
# # END SOLUTION

# %% [raw]
# # END QUESTION
