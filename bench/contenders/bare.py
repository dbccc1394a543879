"""The floor: a bare interpreter that starts, prints and exits."""

print("0 -")
