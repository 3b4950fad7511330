"""Code the test files share (no tests here): `browser` (a studio server, Chromium and page
helpers), `hub` (a fake Hugging Face Hub), `hostile` (hostile files), `golden` (the golden
StyleGAN2 renders), `nvlabs_pickles` (checkpoints laid out as NVlabs and rosinality save
them) and `runs` (command-line runs, killed and resumed, and tiny training settings).
Test files import from here, never from one another."""
