# Output error against stored bytes per token (whole model, K and V) for
# every replayed kernel, from output_error_vs_bytes_stories260K.dat.
# Rerun: gnuplot output_error_vs_bytes_stories260K.gp
set terminal svg size 820,620 font "sans,11"
set output "output_error_vs_bytes_stories260K.svg"
set title "stories260K: output error vs bytes per token" noenhanced
set xlabel "stored bytes per token, whole model, K and V (log scale)"
set ylabel "||o^ - o|| / ||o||, mean over heads (log scale)"
set logscale xy
set key below noenhanced
set grid
plot "output_error_vs_bytes_stories260K.dat" using 1:($3==0?$2:1/0) with points pt 7 ps 1.3 title "dense, quanto, KIVI", \
     "" using 1:($3==1?$2:1/0) with points pt 9 ps 1.3 title "compressed keys, exact F32 values", \
     "" using 1:($3==2?$2:1/0) with points pt 5 ps 1.3 title "value approximations on TurboQuant-prod keys", \
     "" using 1:($3==3?$2:1/0) with points pt 13 ps 1.3 title "keys and values both coded", \
     "" using 1:($3==4?$2:1/0) with points pt 11 ps 1.3 title "exact F32 keys, value approximations"
