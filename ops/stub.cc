extern "C" int stub(){return 1;}
