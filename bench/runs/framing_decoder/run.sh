#!/bin/bash
# The framing / decoder / initialisation ablation of issue 19 (one process
# per seed: ./run.sh 0 and ./run.sh 1, from the repository root).
python bench/learning_speed.py \
  --models authors=s4m_tiny right=s4m_tiny shared=s4m_tiny v01=s4m_tiny \
  --override authors:"{num_iterations: 4}" right:"{num_iterations: 4, framing: right}" \
     shared:"{num_iterations: 4, joint_decoder: False}" \
     v01:"{num_iterations: 4, framing: right, joint_decoder: False, xavier_init: False}" \
  --updates 400 --eval-every 25 --seeds $1 --lr 1e-3 --clip 5 --threads 1 \
  --json bench/runs/framing_decoder/ls_seed$1.json --plot bench/runs/framing_decoder/ls_seed$1.png
