from tuneforge.trainers.cli import main

main()
