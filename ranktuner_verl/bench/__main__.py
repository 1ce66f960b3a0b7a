from ranktuner_verl.bench.core import main

main()
