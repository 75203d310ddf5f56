from pretrainer.entry import main

main()
