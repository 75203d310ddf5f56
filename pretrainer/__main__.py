from pretrainer.cli import main

main()
