# Logit error against bits per coordinate for the compressed-key codecs
# (values exact), from logit_error_vs_bits_stories260K.dat. Rerun: gnuplot logit_error_vs_bits_stories260K.gp
set terminal svg size 720,560 font "sans,11"
set output "logit_error_vs_bits_stories260K.svg"
set title "stories260K: key codecs, logit RMSE relative to the exact logits' std" noenhanced
set xlabel "bits per coordinate"
set ylabel "logit RMSE / std(exact logits)"
set xtics 1
set xrange [1.8:4.2]
set logscale y
set key below noenhanced
set grid
plot "logit_error_vs_bits_stories260K.dat" using 1:2 with linespoints lw 2 pt 4 title "TurboQuant-MSE", \
     "logit_error_vs_bits_stories260K.dat" using 1:3 with linespoints lw 2 pt 5 title "TurboQuant-MSE, center=1", \
     "logit_error_vs_bits_stories260K.dat" using 1:4 with linespoints lw 2 pt 6 title "TurboQuant-MSE, exact sinks + 32 recent", \
     "logit_error_vs_bits_stories260K.dat" using 1:5 with linespoints lw 2 pt 7 title "TurboQuant-prod", \
     "logit_error_vs_bits_stories260K.dat" using 1:6 with linespoints lw 2 pt 8 title "QJL, m = b d", \
     "logit_error_vs_bits_stories260K.dat" using 1:7 with linespoints lw 2 pt 9 title "quanto, no residual window"
