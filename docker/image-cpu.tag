genladder:cpu-f041b1060546
